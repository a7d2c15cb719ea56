//! Arrow column builders shared by the kernels: the model lineage columns and the heatmap struct.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, ListBuilder,
    StringBuilder, StructArray,
};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Field, Fields};

use crate::core::model::ModelInfo;
use crate::core::ood::OodFlag;
use crate::core::quality::ImageQuality;

/// Fields of the heatmap struct: `rows int32, cols int32, values list<float32>` (row-major).
pub fn heatmap_fields() -> Fields {
    Fields::from(vec![
        Field::new("rows", DataType::Int32, true),
        Field::new("cols", DataType::Int32, true),
        Field::new(
            "values",
            DataType::List(Arc::new(Field::new("item", DataType::Float32, true))),
            true,
        ),
    ])
}

/// The nullable `heatmap` column field.
pub fn heatmap_field() -> Field {
    Field::new("heatmap", DataType::Struct(heatmap_fields()), true)
}

/// The `embedding list<double>` field.
pub fn embedding_field() -> Field {
    Field::new(
        "embedding",
        DataType::List(Arc::new(Field::new("item", DataType::Float64, true))),
        true,
    )
}

/// A class-activation map of one image: `rows x cols` row-major logit contributions.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    /// Grid rows.
    pub rows: usize,
    /// Grid columns.
    pub cols: usize,
    /// Row-major values.
    pub values: Vec<f32>,
}

/// Builds the heatmap struct column row by row.
pub(crate) struct HeatmapBuilder {
    rows: Int32Builder,
    cols: Int32Builder,
    values: ListBuilder<Float32Builder>,
    valid: Vec<bool>,
}

impl HeatmapBuilder {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            rows: Int32Builder::with_capacity(n),
            cols: Int32Builder::with_capacity(n),
            values: ListBuilder::new(Float32Builder::new()),
            valid: Vec::with_capacity(n),
        }
    }

    pub(crate) fn append(&mut self, heatmap: Option<&Heatmap>) {
        match heatmap {
            Some(h) => {
                self.rows.append_value(h.rows as i32);
                self.cols.append_value(h.cols as i32);
                self.values.values().append_slice(&h.values);
                self.values.append(true);
                self.valid.push(true);
            }
            None => {
                self.rows.append_null();
                self.cols.append_null();
                self.values.append(false);
                self.valid.push(false);
            }
        }
    }

    pub(crate) fn finish(mut self) -> ArrayRef {
        let children: Vec<ArrayRef> = vec![
            Arc::new(self.rows.finish()),
            Arc::new(self.cols.finish()),
            Arc::new(self.values.finish()),
        ];
        Arc::new(
            StructArray::try_new(
                heatmap_fields(),
                children,
                Some(NullBuffer::from(self.valid)),
            )
            .expect("children match the heatmap fields"),
        )
    }
}

/// Appends one embedding (or NULL) to a `list<double>` builder.
pub(crate) fn append_embedding(builder: &mut ListBuilder<Float64Builder>, values: Option<&[f64]>) {
    match values {
        Some(values) => {
            builder.values().append_slice(values);
            builder.append(true);
        }
        None => builder.append(false),
    }
}

/// The image statistics columns `features` and `analyze` share: `width`, `height` (full
/// resolution), `mean_pixel_value`, `std_pixel_value`, `quality_score` and `embedding`.
pub(crate) struct StatsBuilder {
    width: Int32Builder,
    height: Int32Builder,
    mean: Float64Builder,
    std: Float64Builder,
    quality: Float64Builder,
    embedding: ListBuilder<Float64Builder>,
}

impl StatsBuilder {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            width: Int32Builder::with_capacity(n),
            height: Int32Builder::with_capacity(n),
            mean: Float64Builder::with_capacity(n),
            std: Float64Builder::with_capacity(n),
            quality: Float64Builder::with_capacity(n),
            embedding: ListBuilder::new(Float64Builder::new()),
        }
    }

    /// One image's statistics (and embedding, NULL when None).
    pub(crate) fn append(
        &mut self,
        width: u32,
        height: u32,
        q: &ImageQuality,
        embedding: Option<&[f64]>,
    ) {
        self.width.append_value(width as i32);
        self.height.append_value(height as i32);
        self.mean.append_value(q.mean);
        self.std.append_value(q.std);
        self.quality.append_value(q.score);
        append_embedding(&mut self.embedding, embedding);
    }

    /// A row that failed: NULL in every column.
    pub(crate) fn append_null(&mut self) {
        self.width.append_null();
        self.height.append_null();
        self.mean.append_null();
        self.std.append_null();
        self.quality.append_null();
        self.embedding.append(false);
    }

    /// `[width, height, mean_pixel_value, std_pixel_value, quality_score, embedding]`.
    pub(crate) fn finish(mut self) -> [ArrayRef; 6] {
        [
            Arc::new(self.width.finish()),
            Arc::new(self.height.finish()),
            Arc::new(self.mean.finish()),
            Arc::new(self.std.finish()),
            Arc::new(self.quality.finish()),
            Arc::new(self.embedding.finish()),
        ]
    }
}

/// The prediction columns of one model: `probability`, `predicted_label`, `label_name`,
/// `model_name`, `model_version` (the last two filled on every row, for lineage), then the
/// out-of-distribution flag `ood_score`, `out_of_distribution`, `ood_reason` (see
/// [`crate::core::ood`]).
pub(crate) struct PredictionBuilder<'a> {
    info: &'a ModelInfo,
    probability: Float64Builder,
    label: Int32Builder,
    label_name: StringBuilder,
    model_name: StringBuilder,
    model_version: StringBuilder,
    ood_score: Float64Builder,
    out_of_distribution: BooleanBuilder,
    ood_reason: StringBuilder,
}

impl<'a> PredictionBuilder<'a> {
    pub(crate) fn new(info: &'a ModelInfo, n: usize) -> Self {
        Self {
            info,
            probability: Float64Builder::with_capacity(n),
            label: Int32Builder::with_capacity(n),
            label_name: StringBuilder::new(),
            model_name: StringBuilder::new(),
            model_version: StringBuilder::new(),
            ood_score: Float64Builder::with_capacity(n),
            out_of_distribution: BooleanBuilder::with_capacity(n),
            ood_reason: StringBuilder::new(),
        }
    }

    /// One row: its probability (`None` for a failed row) and out-of-distribution flag (`None`
    /// = NULL flag columns).
    pub(crate) fn append(&mut self, probability: Option<f64>, flag: Option<&OodFlag>) {
        self.model_name.append_value(&self.info.name);
        self.model_version.append_value(&self.info.version);
        let flag = flag.filter(|_| probability.is_some());
        self.ood_score.append_option(flag.and_then(|f| f.score));
        self.out_of_distribution
            .append_option(flag.and_then(|f| f.flagged));
        self.ood_reason
            .append_option(flag.and_then(|f| f.reason.as_deref()));
        match probability {
            Some(p) => {
                let positive = p >= self.info.threshold;
                self.probability.append_value(p);
                self.label.append_value(positive as i32);
                self.label_name
                    .append_value(&self.info.labels[positive as usize]);
            }
            None => {
                self.probability.append_null();
                self.label.append_null();
                self.label_name.append_null();
            }
        }
    }

    /// `[probability, predicted_label, label_name, model_name, model_version, ood_score,
    /// out_of_distribution, ood_reason]`.
    pub(crate) fn finish(mut self) -> [ArrayRef; 8] {
        [
            Arc::new(self.probability.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.label_name.finish()),
            Arc::new(self.model_name.finish()),
            Arc::new(self.model_version.finish()),
            Arc::new(self.ood_score.finish()),
            Arc::new(self.out_of_distribution.finish()),
            Arc::new(self.ood_reason.finish()),
        ]
    }

    /// The fields of [`PredictionBuilder::finish`]'s columns.
    pub(crate) fn fields() -> [Field; 8] {
        [
            Field::new("probability", DataType::Float64, true),
            Field::new("predicted_label", DataType::Int32, true),
            Field::new("label_name", DataType::Utf8, true),
            Field::new("model_name", DataType::Utf8, true),
            Field::new("model_version", DataType::Utf8, true),
            Field::new("ood_score", DataType::Float64, true),
            Field::new("out_of_distribution", DataType::Boolean, true),
            Field::new("ood_reason", DataType::Utf8, true),
        ]
    }
}

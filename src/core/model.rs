//! ONNX Runtime: one environment per process, sessions cached per model file, model metadata.
//!
//! The runtime is the shared library shipped in the `onnxruntime` PyPI package, loaded at run time
//! (`ort` feature `load-dynamic`). Sessions are cached per (model path, thread count) and tagged
//! with the pid that created them: after `fork` the intra-op threads of a parent's session do not
//! exist, so a child builds its own sessions (leaking, never dropping, the parent's).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::environment::Environment;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::TensorRef;

use crate::core::error::CoreError;
use crate::core::preprocess::Preprocessing;
use crate::core::threads::current_pid;

/// Environment variable naming the ONNX Runtime shared library (used when no path is passed).
pub const ORT_LIBRARY_ENV: &str = "ORT_DYLIB_PATH";

/// Name of the model input, per the model contract.
pub const INPUT_NAME: &str = "input";
/// Name of the probability output, per the model contract.
pub const PROBABILITY_NAME: &str = "probability";
/// Name of the optional embedding output, per the model contract.
pub const EMBEDDING_NAME: &str = "embedding";
/// Name of the optional class-activation map output, per the model contract.
pub const HEATMAP_NAME: &str = "heatmap";
/// Metadata key of the head's bias: `logit = head_bias + mean(heatmap)`.
pub const HEAD_BIAS_KEY: &str = "cxrlake.head_bias";
/// Name of the optional out-of-distribution score output (`[N]`, higher = less like the training
/// films), computed in the graph from the embedding (`cxrlake.training.ood`).
pub const OOD_SCORE_NAME: &str = "ood_score";
/// Metadata key of the score above which a film is flagged out of distribution (required with
/// the `ood_score` output).
pub const OOD_THRESHOLD_KEY: &str = "cxrlake.ood_threshold";
/// Metadata key of the training films' drift reference (JSON, `cxrlake.training.ood`).
pub const DRIFT_REFERENCE_KEY: &str = "cxrlake.drift_reference";

static ENVIRONMENT: Mutex<Option<Environment>> = Mutex::new(None);

/// Loads ONNX Runtime from `library` (else env `ORT_DYLIB_PATH`) once per process.
///
/// Later calls return the existing environment whatever path they pass.
pub fn init_runtime(library: Option<&Path>) -> Result<Environment, CoreError> {
    let mut guard = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(environment) = guard.as_ref() {
        return Ok(environment.clone());
    }
    let library: PathBuf = match library {
        Some(path) => path.to_path_buf(),
        None => std::env::var_os(ORT_LIBRARY_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| {
                CoreError::Runtime(format!(
                    "ONNX Runtime library not configured: set {ORT_LIBRARY_ENV} to libonnxruntime \
                 (it ships in the onnxruntime Python package under onnxruntime/capi)"
                ))
            })?,
    };
    if !library.is_file() {
        return Err(CoreError::Runtime(format!(
            "ONNX Runtime library not found: {}",
            library.display()
        )));
    }
    let environment = ort::init_from(&library)
        .map_err(|e| {
            CoreError::Runtime(format!(
                "cannot load ONNX Runtime from {}: {e}",
                library.display()
            ))
        })?
        .with_name("cxrlake")
        .with_telemetry(false)
        .build()
        .map_err(|e| {
            CoreError::Runtime(format!("cannot create the ONNX Runtime environment: {e}"))
        })?;
    *guard = Some(environment.clone());
    Ok(environment)
}

/// What the model artifact says about itself (ONNX `metadata_props`, contract `cxrlake.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Canonical path of the model file.
    pub path: PathBuf,
    /// `cxrlake.model_name`.
    pub name: String,
    /// `cxrlake.model_version`.
    pub version: String,
    /// `cxrlake.threshold`: predicted label is 1 when probability >= threshold.
    pub threshold: f64,
    /// `cxrlake.labels`: names of label 0 and label 1.
    pub labels: [String; 2],
    /// Input size and normalisation.
    pub preprocessing: Preprocessing,
    /// Length of the `embedding` output, when the model has one.
    pub embedding_dim: Option<usize>,
    /// Whether the model has a `heatmap` output (`[N, Hf, Wf]` class-activation map).
    pub has_heatmap: bool,
    /// `cxrlake.head_bias`: the head's bias, so that `logit = head_bias + mean(heatmap)`.
    pub head_bias: Option<f64>,
    /// `cxrlake.ood_threshold` when the model has an `ood_score` output: a film whose score is
    /// above it is flagged out of distribution. `None` = the model has no such output.
    pub ood_threshold: Option<f64>,
    /// `cxrlake.drift_reference`: the training films' reference for drift metrics (JSON text,
    /// read by the Python layer), when the model carries one.
    pub drift_reference: Option<String>,
}

/// A loaded model: its metadata and an ONNX Runtime session (one run at a time).
pub struct PneumoniaModel {
    info: ModelInfo,
    session: Mutex<Session>,
}

/// Which optional outputs an inference run should compute and return (the probability always is).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outputs {
    /// The `embedding` output, when the model has one.
    pub embedding: bool,
    /// The `heatmap` output, when the model has one.
    pub heatmap: bool,
    /// The `ood_score` output, when the model has one.
    pub ood_score: bool,
}

impl Outputs {
    /// The probability only.
    pub const PROBABILITY: Self = Self {
        embedding: false,
        heatmap: false,
        ood_score: false,
    };
    /// The probability and the out-of-distribution score (what `predict` asks for).
    pub const PREDICTION: Self = Self {
        embedding: false,
        heatmap: false,
        ood_score: true,
    };
}

/// Class-activation maps of one inference run: `n` grids of `rows x cols`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmaps {
    /// Grid rows (Hf).
    pub rows: usize,
    /// Grid columns (Wf).
    pub cols: usize,
    /// `[n, rows, cols]` row-major values (logit contributions per cell).
    pub values: Vec<f32>,
}

impl Heatmaps {
    /// The grid of image `k`.
    pub fn grid(&self, k: usize) -> &[f32] {
        let cells = self.rows * self.cols;
        &self.values[k * cells..(k + 1) * cells]
    }
}

/// Outputs of one inference run over `n` images.
#[derive(Debug, Clone)]
pub struct InferenceOutput {
    /// P(PNEUMONIA) per image.
    pub probabilities: Vec<f32>,
    /// `[n, D]` row-major embeddings, when requested and available.
    pub embeddings: Option<Vec<f32>>,
    /// Class-activation maps, when requested and available.
    pub heatmaps: Option<Heatmaps>,
    /// Out-of-distribution score per image, when requested and available.
    pub ood_scores: Option<Vec<f32>>,
}

struct SessionCache {
    pid: u32,
    models: HashMap<(PathBuf, usize), Arc<PneumoniaModel>>,
}

static MODELS: Mutex<Option<SessionCache>> = Mutex::new(None);

impl PneumoniaModel {
    /// The cached model for `path` with `threads` intra-op threads, loading it on first use.
    ///
    /// The runtime must be initialised ([`init_runtime`]) or `ORT_DYLIB_PATH` set.
    pub fn load(path: &Path, threads: usize) -> Result<Arc<Self>, CoreError> {
        let canonical = path.canonicalize().map_err(|e| {
            CoreError::Model(format!("model file not found: {} ({e})", path.display()))
        })?;
        let key = (canonical.clone(), threads);
        let pid = current_pid();
        {
            let mut guard = MODELS.lock().unwrap_or_else(|p| p.into_inner());
            let cache = guard.get_or_insert_with(|| SessionCache {
                pid,
                models: HashMap::new(),
            });
            if cache.pid != pid {
                // Forked child: the parent's sessions reference threads that do not exist here.
                std::mem::forget(std::mem::take(&mut cache.models));
                cache.pid = pid;
            }
            if let Some(model) = cache.models.get(&key) {
                return Ok(model.clone());
            }
        }
        let model = Arc::new(Self::open(&canonical, threads)?);
        let mut guard = MODELS.lock().unwrap_or_else(|p| p.into_inner());
        let cache = guard.get_or_insert_with(|| SessionCache {
            pid,
            models: HashMap::new(),
        });
        Ok(cache.models.entry(key).or_insert(model).clone())
    }

    fn open(path: &Path, threads: usize) -> Result<Self, CoreError> {
        let environment = init_runtime(None)?;
        let model_error = |e: &dyn std::fmt::Display| {
            CoreError::Model(format!("cannot load model {}: {e}", path.display()))
        };
        let session = Session::builder(&environment)
            .map_err(|e| model_error(&e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| model_error(&e))?
            .with_intra_threads(threads)
            .map_err(|e| model_error(&e))?
            .with_inter_threads(1)
            .map_err(|e| model_error(&e))?
            // Decoding runs on other threads at the same time: spinning ORT workers would steal
            // the cores the decoders need (env CXRLAKE_ORT_SPINNING=1 turns spinning back on).
            .with_intra_op_spinning(env_flag("CXRLAKE_ORT_SPINNING"))
            .map_err(|e| model_error(&e))?
            .commit_from_file(path)
            .map_err(|e| model_error(&e))?;
        let info = read_model_info(path, &session)?;
        Ok(Self {
            info,
            session: Mutex::new(session),
        })
    }

    /// The model's metadata.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Runs the model on `n` images whose tensors are concatenated in `tensors`
    /// (`n * C * H * W` floats). Returns one probability per image, plus the embeddings and
    /// heatmaps that `want` asks for and the model has. Outputs not asked for are not computed
    /// (ONNX Runtime prunes their branch of the graph).
    pub fn infer(
        &self,
        tensors: &[f32],
        n: usize,
        want: Outputs,
    ) -> Result<InferenceOutput, String> {
        let prep = &self.info.preprocessing;
        let embedding = want.embedding && self.info.embedding_dim.is_some();
        let heatmap = want.heatmap && self.info.has_heatmap;
        let ood_score = want.ood_score && self.info.ood_threshold.is_some();
        if n == 0 {
            return Ok(InferenceOutput {
                probabilities: Vec::new(),
                embeddings: embedding.then(Vec::new),
                heatmaps: None,
                ood_scores: ood_score.then(Vec::new),
            });
        }
        if tensors.len() != n * prep.tensor_len() {
            return Err(format!(
                "tensor has {} values, expected {}",
                tensors.len(),
                n * prep.tensor_len()
            ));
        }
        let shape = [n, prep.channels, prep.height as usize, prep.width as usize];
        let input = TensorRef::from_array_view((shape, tensors)).map_err(|e| e.to_string())?;
        let mut selector = OutputSelector::no_default().with(PROBABILITY_NAME);
        if embedding {
            selector = selector.with(EMBEDDING_NAME);
        }
        if heatmap {
            selector = selector.with(HEATMAP_NAME);
        }
        if ood_score {
            selector = selector.with(OOD_SCORE_NAME);
        }
        let run_options = RunOptions::new()
            .map_err(|e| format!("inference failed: {e}"))?
            .with_outputs(selector);
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outputs = session
            .run_with_options(ort::inputs![INPUT_NAME => input], &run_options)
            .map_err(|e| format!("inference failed: {e}"))?;
        let (_, probabilities) = outputs[PROBABILITY_NAME]
            .try_extract_tensor::<f32>()
            .map_err(|e| format!("inference failed: probability output: {e}"))?;
        if probabilities.len() != n {
            return Err(format!(
                "model returned {} probabilities for {n} images",
                probabilities.len()
            ));
        }
        let probabilities = probabilities.to_vec();
        let embeddings = match (embedding, self.info.embedding_dim) {
            (true, Some(dim)) => {
                let (_, values) = outputs[EMBEDDING_NAME]
                    .try_extract_tensor::<f32>()
                    .map_err(|e| format!("inference failed: embedding output: {e}"))?;
                if values.len() != n * dim {
                    return Err(format!(
                        "model returned {} embedding values for {n} images of {dim}",
                        values.len()
                    ));
                }
                Some(values.to_vec())
            }
            _ => None,
        };
        let heatmaps = if heatmap {
            let (shape, values) = outputs[HEATMAP_NAME]
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("inference failed: heatmap output: {e}"))?;
            // [N, Hf, Wf] or [N, 1, Hf, Wf]: the grid is the last two dimensions.
            let dims: Vec<i64> = shape.iter().copied().collect();
            let grid = match dims.as_slice() {
                [first, rest @ ..] if *first as usize == n && rest.len() >= 2 => {
                    let rows = rest[rest.len() - 2] as usize;
                    let cols = rest[rest.len() - 1] as usize;
                    (rows * cols * n == values.len() && rows > 0 && cols > 0)
                        .then_some((rows, cols))
                }
                _ => None,
            };
            let (rows, cols) = grid.ok_or_else(|| {
                format!("model returned a heatmap of shape {dims:?} for {n} images, expected [N, Hf, Wf]")
            })?;
            Some(Heatmaps {
                rows,
                cols,
                values: values.to_vec(),
            })
        } else {
            None
        };
        let ood_scores = if ood_score {
            let (_, values) = outputs[OOD_SCORE_NAME]
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("inference failed: ood_score output: {e}"))?;
            if values.len() != n {
                return Err(format!(
                    "model returned {} ood scores for {n} images",
                    values.len()
                ));
            }
            Some(values.to_vec())
        } else {
            None
        };
        Ok(InferenceOutput {
            probabilities,
            embeddings,
            heatmaps,
            ood_scores,
        })
    }
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

fn read_model_info(path: &Path, session: &Session) -> Result<ModelInfo, CoreError> {
    let fail = |what: String| CoreError::Model(format!("model {} {what}", path.display()));
    if !session.inputs().iter().any(|i| i.name() == INPUT_NAME) {
        return Err(fail(format!("has no input named {INPUT_NAME:?}")));
    }
    if !session
        .outputs()
        .iter()
        .any(|o| o.name() == PROBABILITY_NAME)
    {
        return Err(fail(format!("has no output named {PROBABILITY_NAME:?}")));
    }
    let embedding_dim = session
        .outputs()
        .iter()
        .find(|o| o.name() == EMBEDDING_NAME)
        .and_then(|o| match o.dtype() {
            ort::value::ValueType::Tensor { shape, .. } => shape.last().copied(),
            _ => None,
        });
    let embedding_dim = match embedding_dim {
        None => None,
        Some(d) if d > 0 => Some(d as usize),
        Some(_) => return Err(fail("has an embedding output without a fixed size".into())),
    };
    let has_heatmap = session.outputs().iter().any(|o| o.name() == HEATMAP_NAME);
    let metadata = session
        .metadata()
        .map_err(|e| fail(format!("has unreadable metadata: {e}")))?;
    let get = |key: &str| -> Result<String, CoreError> {
        metadata
            .custom(key)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| fail(format!("lacks metadata {key} (see docs/architecture.md)")))
    };
    let parse_f32_list = |key: &str| -> Result<Vec<f32>, CoreError> {
        get(key)?
            .split(',')
            .map(|v| v.trim().parse::<f32>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| fail(format!("has a non-numeric {key}")))
    };
    let parse_u32 = |key: &str| -> Result<u32, CoreError> {
        get(key)?
            .parse::<u32>()
            .map_err(|_| fail(format!("has a non-integer {key}")))
    };
    let threshold: f64 = get("cxrlake.threshold")?
        .parse()
        .map_err(|_| fail("has a non-numeric cxrlake.threshold".into()))?;
    if !(0.0..=1.0).contains(&threshold) {
        return Err(fail(format!(
            "has cxrlake.threshold {threshold} outside 0..1"
        )));
    }
    let labels_text = metadata
        .custom("cxrlake.labels")
        .unwrap_or_else(|| "NORMAL,PNEUMONIA".into());
    let labels: Vec<String> = labels_text
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let labels: [String; 2] = labels.try_into().map_err(|_| {
        fail(format!(
            "has cxrlake.labels {labels_text:?}, expected two names"
        ))
    })?;
    if let Some(resize) = metadata.custom("cxrlake.resize") {
        if resize.trim() != "bilinear" {
            return Err(fail(format!(
                "asks for cxrlake.resize={resize:?}; only bilinear is supported"
            )));
        }
    }
    let head_bias = match metadata.custom(HEAD_BIAS_KEY) {
        None => None,
        Some(text) => match text.trim().parse::<f64>() {
            Ok(bias) if bias.is_finite() => Some(bias),
            _ => return Err(fail(format!("has a non-numeric {HEAD_BIAS_KEY} {text:?}"))),
        },
    };
    let has_ood_score = session.outputs().iter().any(|o| o.name() == OOD_SCORE_NAME);
    let ood_threshold = match (has_ood_score, metadata.custom(OOD_THRESHOLD_KEY)) {
        (false, _) => None,
        (true, None) => {
            return Err(fail(format!(
                "has an {OOD_SCORE_NAME} output but no {OOD_THRESHOLD_KEY}"
            )))
        }
        (true, Some(text)) => match text.trim().parse::<f64>() {
            Ok(t) if t.is_finite() => Some(t),
            _ => {
                return Err(fail(format!(
                    "has a non-numeric {OOD_THRESHOLD_KEY} {text:?}"
                )))
            }
        },
    };
    let preprocessing = Preprocessing::new(
        parse_u32("cxrlake.input_width")?,
        parse_u32("cxrlake.input_height")?,
        parse_u32("cxrlake.input_channels")? as usize,
        parse_f32_list("cxrlake.mean")?,
        parse_f32_list("cxrlake.std")?,
    )
    .map_err(|e| fail(e.to_string()))?;
    Ok(ModelInfo {
        path: path.to_path_buf(),
        name: get("cxrlake.model_name")?,
        version: get("cxrlake.model_version")?,
        threshold,
        labels,
        preprocessing,
        embedding_dim,
        has_heatmap,
        head_bias,
        ood_threshold,
        drift_reference: metadata.custom(DRIFT_REFERENCE_KEY),
    })
}

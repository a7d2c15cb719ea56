//! The image column of a batch: encoded bytes or file paths, in any Arrow binary/string layout.

use std::borrow::Cow;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BinaryViewArray, LargeBinaryArray, LargeStringArray,
    StringArray, StringViewArray,
};
use arrow::datatypes::DataType;

use crate::core::error::{CoreError, RowError, RowResult};
use crate::core::limits::Limits;
use crate::core::sandbox::Sandbox;

/// One row of an [`ImageColumn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageRef<'a> {
    /// Encoded image bytes.
    Bytes(&'a [u8]),
    /// A file path to read through the sandbox.
    Path(&'a str),
    /// A NULL row.
    Null,
}

/// A column of images: `binary`, `large_binary`, `binary_view` (bytes) or `utf8`, `large_utf8`,
/// `utf8_view` (paths). Holding the Arrow array keeps its buffers alive; rows are borrowed, not copied.
#[derive(Debug, Clone)]
pub struct ImageColumn {
    inner: Inner,
}

#[derive(Debug, Clone)]
enum Inner {
    Binary(BinaryArray),
    LargeBinary(LargeBinaryArray),
    BinaryView(BinaryViewArray),
    Utf8(StringArray),
    LargeUtf8(LargeStringArray),
    Utf8View(StringViewArray),
}

impl ImageColumn {
    /// Wraps an Arrow array; any other type is an invalid argument.
    pub fn new(array: &ArrayRef) -> Result<Self, CoreError> {
        let inner = match array.data_type() {
            DataType::Binary => Inner::Binary(array.as_binary::<i32>().clone()),
            DataType::LargeBinary => Inner::LargeBinary(array.as_binary::<i64>().clone()),
            DataType::BinaryView => Inner::BinaryView(array.as_binary_view().clone()),
            DataType::Utf8 => Inner::Utf8(array.as_string::<i32>().clone()),
            DataType::LargeUtf8 => Inner::LargeUtf8(array.as_string::<i64>().clone()),
            DataType::Utf8View => Inner::Utf8View(array.as_string_view().clone()),
            other => {
                return Err(CoreError::InvalidArgument(format!(
                    "images must be binary (image bytes) or string (file paths), got {other}"
                )))
            }
        };
        Ok(Self { inner })
    }

    /// Convenience constructor for a column of file paths.
    pub fn from_paths<S: AsRef<str>>(paths: &[S]) -> Self {
        Self {
            inner: Inner::Utf8(paths.iter().map(|p| Some(p.as_ref())).collect()),
        }
    }

    /// Convenience constructor for a column of encoded images.
    pub fn from_bytes<B: AsRef<[u8]>>(images: &[B]) -> Self {
        Self {
            inner: Inner::Binary(images.iter().map(|b| Some(b.as_ref())).collect()),
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Binary(a) => a.len(),
            Inner::LargeBinary(a) => a.len(),
            Inner::BinaryView(a) => a.len(),
            Inner::Utf8(a) => a.len(),
            Inner::LargeUtf8(a) => a.len(),
            Inner::Utf8View(a) => a.len(),
        }
    }

    /// Whether the column has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` (must be `< len()`).
    pub fn get(&self, i: usize) -> ImageRef<'_> {
        macro_rules! row {
            ($array:expr, $variant:ident) => {
                if $array.is_null(i) {
                    ImageRef::Null
                } else {
                    ImageRef::$variant($array.value(i))
                }
            };
        }
        match &self.inner {
            Inner::Binary(a) => row!(a, Bytes),
            Inner::LargeBinary(a) => row!(a, Bytes),
            Inner::BinaryView(a) => row!(a, Bytes),
            Inner::Utf8(a) => row!(a, Path),
            Inner::LargeUtf8(a) => row!(a, Path),
            Inner::Utf8View(a) => row!(a, Path),
        }
    }

    /// The encoded bytes of row `i`: borrowed for byte columns, read through `sandbox` for paths.
    pub fn load(&self, i: usize, limits: &Limits, sandbox: &Sandbox) -> RowResult<Cow<'_, [u8]>> {
        match self.get(i) {
            ImageRef::Null => Err(RowError::new("null input")),
            ImageRef::Bytes(bytes) => {
                limits.check_encoded_size(bytes.len() as u64, "image")?;
                if bytes.is_empty() {
                    return Err(RowError::new("empty image data"));
                }
                Ok(Cow::Borrowed(bytes))
            }
            ImageRef::Path(path) => sandbox.read(path, limits).map(Cow::Owned),
        }
    }
}

//! Tensors of the Open Inference Protocol: datatypes, values, and the raw little-endian form
//! (gRPC `raw_input_contents`, the HTTP binary tensor data extension).
use std::fmt;

/// The datatypes CRA reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    Bool,
    Int8,
    Int16,
    Int32,
    Int64,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
    Bf16,
}

impl DataType {
    pub fn parse(s: &str) -> Option<DataType> {
        Some(match s {
            "BOOL" => DataType::Bool,
            "INT8" => DataType::Int8,
            "INT16" => DataType::Int16,
            "INT32" => DataType::Int32,
            "INT64" => DataType::Int64,
            "UINT8" => DataType::Uint8,
            "UINT16" => DataType::Uint16,
            "UINT32" => DataType::Uint32,
            "UINT64" => DataType::Uint64,
            "FP16" => DataType::Fp16,
            "FP32" => DataType::Fp32,
            "FP64" => DataType::Fp64,
            "BYTES" => DataType::Bytes,
            "BF16" => DataType::Bf16,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Fp16 => "FP16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
            DataType::Bf16 => "BF16",
        }
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tensor's values, flattened row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    Fp64(Vec<f64>),
    Fp32(Vec<f32>),
    Int64(Vec<i64>),
    Int32(Vec<i32>),
    Bytes(Vec<Vec<u8>>),
    /// A datatype CRA takes no input of (BOOL, unsigned, FP16...): its element count only, so
    /// that the error can name the tensor and its type.
    Other(usize),
}

impl Data {
    pub fn len(&self) -> usize {
        match self {
            Data::Fp64(v) => v.len(),
            Data::Fp32(v) => v.len(),
            Data::Int64(v) => v.len(),
            Data::Int32(v) => v.len(),
            Data::Bytes(v) => v.len(),
            Data::Other(n) => *n,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// FP64, FP32, INT64 or INT32: the datatypes a numeric field accepts.
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            Data::Fp64(_) | Data::Fp32(_) | Data::Int64(_) | Data::Int32(_)
        )
    }

    /// Element `i` of a numeric tensor as `f64` (every INT32 and every contract integer of an
    /// INT64 is exact; FP32 widens exactly). NaN for a non-numeric tensor.
    pub fn number(&self, i: usize) -> f64 {
        match self {
            Data::Fp64(v) => v[i],
            Data::Fp32(v) => f64::from(v[i]),
            Data::Int64(v) => v[i] as f64,
            Data::Int32(v) => f64::from(v[i]),
            _ => f64::NAN,
        }
    }

    /// Reads `count` elements of `datatype` from their raw little-endian form.
    pub fn from_raw(datatype: DataType, bytes: &[u8], count: usize) -> Result<Data, String> {
        fn fixed<const N: usize, T>(
            bytes: &[u8],
            count: usize,
            f: impl Fn([u8; N]) -> T,
        ) -> Result<Vec<T>, String> {
            if bytes.len() != count.saturating_mul(N) {
                return Err(format!(
                    "holds {} bytes of raw contents; its shape needs {} elements of {N} bytes",
                    bytes.len(),
                    count
                ));
            }
            Ok(bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks of N bytes")))
                .collect())
        }
        Ok(match datatype {
            DataType::Fp64 => Data::Fp64(fixed(bytes, count, f64::from_le_bytes)?),
            DataType::Fp32 => Data::Fp32(fixed(bytes, count, f32::from_le_bytes)?),
            DataType::Int64 => Data::Int64(fixed(bytes, count, i64::from_le_bytes)?),
            DataType::Int32 => Data::Int32(fixed(bytes, count, i32::from_le_bytes)?),
            DataType::Bytes => {
                let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
                let mut rest = bytes;
                while !rest.is_empty() {
                    if rest.len() < 4 {
                        return Err("has raw BYTES contents cut inside an element's length".into());
                    }
                    let (len, tail) = rest.split_at(4);
                    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
                    if tail.len() < len {
                        return Err(format!(
                            "has a raw BYTES element of {len} bytes but only {} bytes are left",
                            tail.len()
                        ));
                    }
                    out.push(tail[..len].to_vec());
                    rest = &tail[len..];
                    if out.len() > count {
                        break;
                    }
                }
                if out.len() != count {
                    return Err(format!(
                        "holds {}{} raw BYTES elements; its shape needs {count}",
                        if out.len() > count { "more than " } else { "" },
                        out.len().min(count)
                    ));
                }
                Data::Bytes(out)
            }
            _ => Data::Other(count),
        })
    }

    /// The raw little-endian form: BYTES elements each as a 4-byte length and the bytes.
    pub fn to_raw(&self) -> Vec<u8> {
        match self {
            Data::Fp64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Fp32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Int64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Int32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::Bytes(v) => {
                let mut out = Vec::with_capacity(v.iter().map(|b| b.len() + 4).sum());
                for b in v {
                    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
                    out.extend_from_slice(b);
                }
                out
            }
            Data::Other(_) => Vec::new(),
        }
    }
}

/// An input tensor as a client sent it.
#[derive(Debug, Clone)]
pub struct InputTensor {
    pub name: String,
    /// As sent (an unknown datatype is kept for the error).
    pub datatype: String,
    pub shape: Vec<i64>,
    pub data: Data,
}

/// An output tensor.
#[derive(Debug, Clone)]
pub struct OutputTensor {
    pub name: &'static str,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    pub data: Data,
}

/// A tensor's declared datatype and shape, checked: its datatype and element count, or what
/// is wrong with them (for a violation naming the tensor).
pub fn header(datatype: &str, shape: &[i64]) -> Result<(DataType, usize), String> {
    let count = element_count(shape)
        .ok_or_else(|| format!("has shape {shape:?}; dimensions must be 0 or more"))?;
    let datatype = DataType::parse(datatype).ok_or_else(|| {
        format!(
            "has datatype {:?}, which is not a datatype of the protocol",
            crate::http::body::truncate(datatype, 32)
        )
    })?;
    Ok((datatype, count))
}

/// The element count of a shape; `None` for a negative dimension or an overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, d| {
        usize::try_from(*d).ok().and_then(|d| acc.checked_mul(d))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_round_trips_and_wrong_lengths_are_errors() {
        let d = Data::Fp64(vec![1.5, f64::NAN]);
        let raw = d.to_raw();
        match Data::from_raw(DataType::Fp64, &raw, 2).unwrap() {
            Data::Fp64(v) => assert!(v[0] == 1.5 && v[1].is_nan()),
            other => panic!("{other:?}"),
        }
        assert!(Data::from_raw(DataType::Fp64, &raw, 3).is_err());
        let b = Data::Bytes(vec![b"rent".to_vec(), Vec::new()]);
        assert_eq!(Data::from_raw(DataType::Bytes, &b.to_raw(), 2).unwrap(), b);
        assert!(Data::from_raw(DataType::Bytes, &b.to_raw(), 1).is_err());
        assert!(Data::from_raw(DataType::Bytes, &b.to_raw()[..5], 2).is_err());
        // A length that claims more than is there.
        assert!(Data::from_raw(DataType::Bytes, &[255, 255, 255, 255, 1], 1).is_err());
    }

    #[test]
    fn element_counts_refuse_negative_and_overflowing_shapes() {
        assert_eq!(element_count(&[3, 1]), Some(3));
        assert_eq!(element_count(&[-1]), None);
        assert_eq!(element_count(&[i64::MAX, i64::MAX]), None);
    }
}

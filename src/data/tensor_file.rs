//! The data artifact: one safetensors file with `images` (f32 `[N, C, H, W]`)
//! or `points` (f32 `[N, 2]`) and `labels` (i64 `[N]`) where there are labels,
//! readable by Python's `safetensors.numpy.load_file`. The header metadata
//! (strings, ignored by numpy) keeps what the tensors cannot: `format`,
//! `classes`, `sources` (JSON) and `mixture` (JSON).

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::nn::Float;

use super::{
    read_file, write_file, DataError, DataTensor, Dataset, GaussianMixture, Result, SourceFile,
};

/// Value of the `format` metadata key.
pub const FORMAT: &str = "ablate-data-1";

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    <f32 as Float>::to_le_bytes_vec(v)
}

fn i64_bytes(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serialises a dataset to safetensors bytes.
pub fn to_safetensors_bytes(ds: &Dataset) -> Result<Vec<u8>> {
    ds.check()?;
    let data_bytes = f32_bytes(ds.data.values());
    let label_bytes = ds.labels.as_deref().map(i64_bytes);
    let st = |e: safetensors::SafeTensorError| DataError::Invalid(format!("safetensors: {e}"));
    let mut tensors = vec![(
        ds.data.name().to_string(),
        TensorView::new(Dtype::F32, ds.data.shape(), &data_bytes).map_err(st)?,
    )];
    if let Some(lb) = &label_bytes {
        tensors.push((
            "labels".to_string(),
            TensorView::new(Dtype::I64, vec![ds.len()], lb).map_err(st)?,
        ));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), FORMAT.to_string());
    if let Some(c) = ds.classes {
        meta.insert("classes".to_string(), c.to_string());
    }
    meta.insert(
        "sources".to_string(),
        serde_json::to_string(&ds.sources).expect("sources serialise"),
    );
    if let Some(m) = &ds.mixture {
        meta.insert(
            "mixture".to_string(),
            serde_json::to_string(m).expect("mixture serialises"),
        );
    }
    crate::util::safetensors_bytes(tensors, meta).map_err(st)
}

/// Writes a dataset as a safetensors file, atomically (temp file + rename).
pub fn save_dataset(ds: &Dataset, path: &Path) -> Result<()> {
    let bytes = to_safetensors_bytes(ds)?;
    write_file(path, &bytes)
}

fn le_f32(path: &Path, view: &TensorView<'_>, name: &str) -> Result<Vec<f32>> {
    if view.dtype() != Dtype::F32 {
        return Err(DataError::format(
            path,
            format!("`{name}` is {:?}, expected F32", view.dtype()),
        ));
    }
    Ok(<f32 as Float>::from_le_bytes_vec(view.data()))
}

/// Parses safetensors bytes written by [`to_safetensors_bytes`] (or by any
/// tool writing the same tensor names); `path` is used in errors.
pub fn from_safetensors_bytes(path: &Path, bytes: &[u8]) -> Result<Dataset> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| DataError::format(path, format!("not a safetensors file: {e}")))?;
    let data = if let Ok(v) = st.tensor("images") {
        let shape = v.shape().to_vec();
        if shape.len() != 4 {
            return Err(DataError::format(
                path,
                format!("`images` has shape {shape:?}, expected [N, C, H, W]"),
            ));
        }
        DataTensor::Images {
            n: shape[0],
            c: shape[1],
            h: shape[2],
            w: shape[3],
            values: le_f32(path, &v, "images")?,
        }
    } else if let Ok(v) = st.tensor("points") {
        let shape = v.shape().to_vec();
        if shape.len() != 2 || shape[1] != 2 {
            return Err(DataError::format(
                path,
                format!("`points` has shape {shape:?}, expected [N, 2]"),
            ));
        }
        DataTensor::Points {
            n: shape[0],
            values: le_f32(path, &v, "points")?,
        }
    } else {
        return Err(DataError::format(
            path,
            "holds neither an `images` nor a `points` tensor",
        ));
    };
    let labels = match st.tensor("labels") {
        Ok(v) => {
            if v.dtype() != Dtype::I64 || v.shape() != [data.n()] {
                return Err(DataError::format(
                    path,
                    format!(
                        "`labels` is {:?} {:?}, expected I64 [{}]",
                        v.dtype(),
                        v.shape(),
                        data.n()
                    ),
                ));
            }
            Some(
                v.data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                    .collect(),
            )
        }
        Err(_) => None,
    };
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| DataError::format(path, format!("not a safetensors file: {e}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let classes = match meta.get("classes") {
        Some(c) => Some(c.parse::<usize>().map_err(|_| {
            DataError::format(path, format!("metadata `classes` = {c:?} is not a count"))
        })?),
        None => None,
    };
    let sources: Vec<SourceFile> = match meta.get("sources") {
        Some(s) => serde_json::from_str(s)
            .map_err(|e| DataError::format(path, format!("metadata `sources`: {e}")))?,
        None => vec![],
    };
    let mixture: Option<GaussianMixture> = match meta.get("mixture") {
        Some(s) => Some(
            serde_json::from_str(s)
                .map_err(|e| DataError::format(path, format!("metadata `mixture`: {e}")))?,
        ),
        None => None,
    };
    let ds = Dataset {
        data,
        labels,
        classes,
        sources,
        mixture,
    };
    ds.check()
        .map_err(|e| DataError::format(path, e.to_string()))?;
    Ok(ds)
}

/// Reads a dataset written by [`save_dataset`].
pub fn load_dataset(path: &Path) -> Result<Dataset> {
    let bytes = read_file(path)?;
    from_safetensors_bytes(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::super::gaussian::gaussian_ring;
    use super::*;

    #[test]
    fn images_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("data.safetensors");
        let ds = Dataset {
            data: DataTensor::Images {
                n: 2,
                c: 3,
                h: 2,
                w: 1,
                values: (0..12).map(|i| i as f32 / 6.0 - 1.0).collect(),
            },
            labels: Some(vec![123, 999]),
            classes: Some(1000),
            sources: vec![SourceFile::from_bytes(Path::new("a/b.gz"), b"xyz")],
            mixture: None,
        };
        save_dataset(&ds, &p).unwrap();
        assert_eq!(load_dataset(&p).unwrap(), ds);
        // The raw layout numpy reads: header length, JSON header, then data.
        let bytes = std::fs::read(&p).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        assert_eq!(header["images"]["dtype"], "F32");
        assert_eq!(header["images"]["shape"], serde_json::json!([2, 3, 2, 1]));
        assert_eq!(header["labels"]["dtype"], "I64");
        assert_eq!(header["labels"]["shape"], serde_json::json!([2]));
        assert_eq!(header["__metadata__"]["format"], FORMAT);
    }

    #[test]
    fn points_round_trip_keeps_mixture_and_unlabelled_images() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ring.safetensors");
        let ds = gaussian_ring(50, 2.0, 0.02, 1).unwrap();
        save_dataset(&ds, &p).unwrap();
        let back = load_dataset(&p).unwrap();
        assert_eq!(back, ds);
        assert_eq!(back.mixture.unwrap().centres.len(), 8);

        let unl = Dataset {
            data: DataTensor::Images {
                n: 1,
                c: 1,
                h: 1,
                w: 1,
                values: vec![0.5],
            },
            labels: None,
            classes: None,
            sources: vec![],
            mixture: None,
        };
        save_dataset(&unl, &p).unwrap();
        assert_eq!(load_dataset(&p).unwrap(), unl);
    }

    /// The same dataset gives the same bytes (so the same blake3 in a manifest), although
    /// the `safetensors` crate writes its metadata `HashMap` in a random order.
    #[test]
    fn bytes_do_not_depend_on_hash_map_order() {
        let ds = gaussian_ring(20, 2.0, 0.02, 1).unwrap();
        let first = to_safetensors_bytes(&ds).unwrap();
        for _ in 0..16 {
            assert_eq!(to_safetensors_bytes(&ds).unwrap(), first);
        }
        let n = u64::from_le_bytes(first[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&first[8..8 + n]).unwrap();
        let at = |k: &str| header.find(&format!("\"{k}\":\"")).unwrap();
        assert!(at("classes") < at("format") && at("format") < at("mixture"));
        assert!(at("mixture") < at("sources"), "{header}");
        assert_eq!(from_safetensors_bytes(Path::new("x"), &first).unwrap(), ds);
    }

    #[test]
    fn garbage_is_rejected_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.safetensors");
        std::fs::write(&p, b"0123456789").unwrap();
        let err = load_dataset(&p).unwrap_err().to_string();
        assert!(err.contains("junk.safetensors"), "{err}");
    }
}

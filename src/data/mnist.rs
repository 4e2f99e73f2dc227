//! MNIST from the original IDX files, gzipped or not.
//!
//! IDX (all integers big-endian): a u32 magic number `0x0000 08 ND` (type 0x08
//! = unsigned byte, ND dimensions), ND u32 dimension sizes, then the data.
//! Images are idx3 (magic 2051 = 0x00000803: count, rows, cols), labels are
//! idx1 (magic 2049 = 0x00000801: count).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::{imageops, ImageBuffer, Luma};
use serde::{Deserialize, Serialize};

use super::{read_file, u8_to_unit, DataError, DataTensor, Dataset, Result, SourceFile};

/// Magic number of an idx3 unsigned-byte file (images).
pub const IDX3_UBYTE_MAGIC: u32 = 0x0000_0803;
/// Magic number of an idx1 unsigned-byte file (labels).
pub const IDX1_UBYTE_MAGIC: u32 = 0x0000_0801;
/// Native MNIST side length.
pub const MNIST_SIDE: usize = 28;

/// Which MNIST split: `train` (60000) or `t10k` (10000, the test set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MnistSplit {
    Train,
    #[serde(alias = "test")]
    T10k,
}

impl MnistSplit {
    /// The file name prefix: `train` or `t10k`.
    pub fn prefix(self) -> &'static str {
        match self {
            MnistSplit::Train => "train",
            MnistSplit::T10k => "t10k",
        }
    }
}

impl FromStr for MnistSplit {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(MnistSplit::Train),
            "t10k" | "test" => Ok(MnistSplit::T10k),
            other => Err(DataError::Invalid(format!(
                "unknown MNIST split `{other}` (expected `train` or `t10k`)"
            ))),
        }
    }
}

/// Parameters of [`load_mnist`].
#[derive(Debug, Clone, PartialEq)]
pub struct MnistOptions {
    /// Folder holding `<split>-images-idx3-ubyte[.gz]` and `<split>-labels-idx1-ubyte[.gz]`.
    pub root: PathBuf,
    pub split: MnistSplit,
    /// Output side length: 28 native, 32 by zero-padding 2 px on each side,
    /// anything else by bilinear resizing.
    pub resolution: usize,
    /// Keep only the first `count` images.
    pub count: Option<usize>,
}

impl MnistOptions {
    /// The t10k split at native resolution, all images.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        MnistOptions {
            root: root.into(),
            split: MnistSplit::T10k,
            resolution: MNIST_SIDE,
            count: None,
        }
    }
}

/// Raw images of an idx3 file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdxImages {
    pub n: usize,
    pub rows: usize,
    pub cols: usize,
    /// n * rows * cols bytes, row-major.
    pub pixels: Vec<u8>,
}

impl IdxImages {
    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.rows * self.cols;
        &self.pixels[i * per..(i + 1) * per]
    }
}

/// Reads a file and decompresses it if it starts with the gzip magic bytes.
/// Returns the file's description (hash of the bytes on disk) and the
/// decompressed contents.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<(SourceFile, Vec<u8>)> {
    let raw = read_file(path)?;
    let source = SourceFile::from_bytes(path, &raw);
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::with_capacity(raw.len() * 4);
        flate2::read::MultiGzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("gzip decompression failed: {e}")))?;
        Ok((source, out))
    } else {
        Ok((source, raw))
    }
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn describe_magic(m: u32) -> &'static str {
    match m {
        IDX3_UBYTE_MAGIC => " (an idx3 image file)",
        IDX1_UBYTE_MAGIC => " (an idx1 label file)",
        _ if m >> 16 == 0x1f8b => " (gzip data that failed to decompress?)",
        _ => "",
    }
}

fn check_magic(path: &Path, bytes: &[u8], expected: u32, kind: &str, header: usize) -> Result<()> {
    let too_short = || {
        DataError::format(
            path,
            format!(
                "too short for an {kind} header: {} bytes, need at least {header}",
                bytes.len()
            ),
        )
    };
    if bytes.len() < 4 {
        return Err(too_short());
    }
    let magic = be_u32(bytes, 0);
    if magic != expected {
        return Err(DataError::format(
            path,
            format!(
                "bad magic number 0x{magic:08x}{}; expected 0x{expected:08x} ({expected}) for an {kind} file",
                describe_magic(magic)
            ),
        ));
    }
    if bytes.len() < header {
        return Err(too_short());
    }
    Ok(())
}

/// Parses decompressed idx3 unsigned-byte data; `path` is used in errors.
pub fn parse_idx_images(path: &Path, bytes: &[u8]) -> Result<IdxImages> {
    check_magic(path, bytes, IDX3_UBYTE_MAGIC, "idx3 image", 16)?;
    let n = be_u32(bytes, 4) as usize;
    let rows = be_u32(bytes, 8) as usize;
    let cols = be_u32(bytes, 12) as usize;
    if rows == 0 || cols == 0 {
        return Err(DataError::format(
            path,
            format!("image size {rows} x {cols} is empty"),
        ));
    }
    let need = n
        .checked_mul(rows)
        .and_then(|x| x.checked_mul(cols))
        .and_then(|x| x.checked_add(16))
        .ok_or_else(|| DataError::format(path, "header sizes overflow"))?;
    if bytes.len() != need {
        return Err(DataError::format(
            path,
            format!(
                "header says {n} images of {rows} x {cols} ({need} bytes) but the data has {} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(IdxImages {
        n,
        rows,
        cols,
        pixels: bytes[16..].to_vec(),
    })
}

/// Parses decompressed idx1 unsigned-byte data; `path` is used in errors.
pub fn parse_idx_labels(path: &Path, bytes: &[u8]) -> Result<Vec<u8>> {
    check_magic(path, bytes, IDX1_UBYTE_MAGIC, "idx1 label", 8)?;
    let n = be_u32(bytes, 4) as usize;
    let need = n + 8;
    if bytes.len() != need {
        return Err(DataError::format(
            path,
            format!(
                "header says {n} labels ({need} bytes) but the data has {} bytes",
                bytes.len()
            ),
        ));
    }
    Ok(bytes[8..].to_vec())
}

/// Reads an idx3 image file, gzipped or not.
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let (_, bytes) = read_maybe_gz(path)?;
    parse_idx_images(path, &bytes)
}

/// Reads an idx1 label file, gzipped or not.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let (_, bytes) = read_maybe_gz(path)?;
    parse_idx_labels(path, &bytes)
}

/// Finds `<name>` or `<name>.gz` in `root` for the first name that exists.
pub fn find_idx_file(root: &Path, names: &[String], what: &str) -> Result<PathBuf> {
    let mut tried = Vec::new();
    for name in names {
        for candidate in [name.clone(), format!("{name}.gz")] {
            let p = root.join(candidate);
            if p.is_file() {
                return Ok(p);
            }
            tried.push(p);
        }
    }
    Err(DataError::NotFound {
        what: what.to_string(),
        tried,
    })
}

/// The image and label file paths of a split under `root` (each may be gzipped;
/// both the `-idx3-ubyte` and the `.idx3-ubyte` spellings are accepted).
pub fn mnist_files(root: &Path, split: MnistSplit) -> Result<(PathBuf, PathBuf)> {
    let p = split.prefix();
    // The shipped datasets/mnist holds only t10k: say where the train split comes from.
    let hint = match split {
        MnistSplit::Train => {
            " (ablate ships only t10k: datasets/README.md says how to add the train split)"
        }
        MnistSplit::T10k => "",
    };
    let images = find_idx_file(
        root,
        &[
            format!("{p}-images-idx3-ubyte"),
            format!("{p}-images.idx3-ubyte"),
        ],
        &format!("MNIST {p} images{hint}"),
    )?;
    let labels = find_idx_file(
        root,
        &[
            format!("{p}-labels-idx1-ubyte"),
            format!("{p}-labels.idx1-ubyte"),
        ],
        &format!("MNIST {p} labels{hint}"),
    )?;
    Ok((images, labels))
}

/// Converts one grayscale u8 image (rows x cols) to `res` x `res` values in
/// [-1, 1]: unchanged at the native size, zero-padded (background, -1) when
/// the target is 4 px larger in both directions (28 -> 32, as GAN papers do),
/// bilinearly resized (image crate, triangle filter, in f32) otherwise.
pub fn resize_gray(pixels: &[u8], rows: usize, cols: usize, res: usize) -> Vec<f32> {
    if rows == res && cols == res {
        return pixels.iter().map(|&p| u8_to_unit(p)).collect();
    }
    if rows + 4 == res && cols + 4 == res {
        let mut out = vec![-1.0f32; res * res];
        for y in 0..rows {
            for x in 0..cols {
                out[(y + 2) * res + x + 2] = u8_to_unit(pixels[y * cols + x]);
            }
        }
        return out;
    }
    let src: ImageBuffer<Luma<f32>, Vec<f32>> = ImageBuffer::from_raw(
        cols as u32,
        rows as u32,
        pixels.iter().map(|&p| p as f32 / 255.0).collect(),
    )
    .expect("buffer matches its size");
    let out = imageops::resize(&src, res as u32, res as u32, imageops::FilterType::Triangle);
    out.into_raw()
        .into_iter()
        .map(|v| (v * 2.0 - 1.0).clamp(-1.0, 1.0))
        .collect()
}

/// Loads MNIST images [N, 1, R, R] in [-1, 1] with labels 0..9 (10 classes).
pub fn load_mnist(opts: &MnistOptions) -> Result<Dataset> {
    if opts.resolution == 0 {
        return Err(DataError::Invalid("resolution must be at least 1".into()));
    }
    let (img_path, lbl_path) = mnist_files(&opts.root, opts.split)?;
    let (img_src, img_bytes) = read_maybe_gz(&img_path)?;
    let images = parse_idx_images(&img_path, &img_bytes)?;
    drop(img_bytes);
    let (lbl_src, lbl_bytes) = read_maybe_gz(&lbl_path)?;
    let labels = parse_idx_labels(&lbl_path, &lbl_bytes)?;
    if labels.len() != images.n {
        return Err(DataError::format(
            &lbl_path,
            format!(
                "{} labels but {} has {} images",
                labels.len(),
                img_path.display(),
                images.n
            ),
        ));
    }
    if let Some((i, l)) = labels.iter().enumerate().find(|(_, &l)| l > 9) {
        return Err(DataError::format(
            &lbl_path,
            format!("label {l} at index {i} is not a digit 0..9"),
        ));
    }
    let n = match opts.count {
        None => images.n,
        Some(0) => return Err(DataError::Invalid("count must be at least 1".into())),
        Some(c) if c > images.n => {
            return Err(DataError::Invalid(format!(
                "count {c} exceeds the {} images of {}",
                images.n,
                img_path.display()
            )))
        }
        Some(c) => c,
    };
    let res = opts.resolution;
    let mut values = Vec::with_capacity(n * res * res);
    for i in 0..n {
        values.extend(resize_gray(images.image(i), images.rows, images.cols, res));
    }
    Ok(Dataset {
        data: DataTensor::Images {
            n,
            c: 1,
            h: res,
            w: res,
            values,
        },
        labels: Some(labels[..n].iter().map(|&l| l as i64).collect()),
        classes: Some(10),
        sources: vec![img_src, lbl_src],
        mixture: None,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// The shipped MNIST folder (the t10k split).
    pub(crate) fn shipped_root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/mnist")
    }

    #[test]
    fn a_missing_train_split_says_where_to_get_it() {
        let dir = tempfile::tempdir().unwrap();
        let err = mnist_files(dir.path(), MnistSplit::Train)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("MNIST train images (ablate ships only t10k"),
            "{err}"
        );
        assert!(err.contains("datasets/README.md"), "{err}");
        let err = mnist_files(dir.path(), MnistSplit::T10k)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("MNIST t10k images not found; tried"),
            "{err}"
        );
    }

    pub(crate) fn idx3(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [IDX3_UBYTE_MAGIC, n, rows, cols] {
            b.extend(v.to_be_bytes());
        }
        b.extend(pixels);
        b
    }

    pub(crate) fn idx1(labels: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(IDX1_UBYTE_MAGIC.to_be_bytes());
        b.extend((labels.len() as u32).to_be_bytes());
        b.extend(labels);
        b
    }

    pub(crate) fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    /// A tiny 3-image 2x3 dataset: image i has pixel j = 10*i + j.
    fn tiny() -> (Vec<u8>, Vec<u8>) {
        let pixels: Vec<u8> = (0..3u8)
            .flat_map(|i| (0..6u8).map(move |j| 10 * i + j))
            .collect();
        (idx3(3, 2, 3, &pixels), idx1(&[4, 0, 9]))
    }

    #[test]
    fn parses_tiny_idx_plain_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let (img, lbl) = tiny();
        std::fs::write(dir.path().join("a-images-idx3-ubyte"), &img).unwrap();
        std::fs::write(dir.path().join("b-images-idx3-ubyte.gz"), gz(&img)).unwrap();
        std::fs::write(dir.path().join("a-labels-idx1-ubyte"), &lbl).unwrap();
        std::fs::write(dir.path().join("b-labels-idx1-ubyte.gz"), gz(&lbl)).unwrap();
        for prefix in ["a", "b"] {
            let ip =
                find_idx_file(dir.path(), &[format!("{prefix}-images-idx3-ubyte")], "x").unwrap();
            let images = read_idx_images(&ip).unwrap();
            assert_eq!((images.n, images.rows, images.cols), (3, 2, 3));
            assert_eq!(images.image(0), &[0, 1, 2, 3, 4, 5]);
            assert_eq!(images.image(2), &[20, 21, 22, 23, 24, 25]);
            let lp =
                find_idx_file(dir.path(), &[format!("{prefix}-labels-idx1-ubyte")], "x").unwrap();
            assert_eq!(read_idx_labels(&lp).unwrap(), vec![4, 0, 9]);
        }
    }

    #[test]
    fn load_mnist_on_tiny_files_scales_to_unit_range() {
        let dir = tempfile::tempdir().unwrap();
        let mut pixels = vec![0u8; 2 * 28 * 28];
        pixels[0] = 255;
        pixels[28 * 28 + 5] = 51;
        std::fs::write(
            dir.path().join("train-images-idx3-ubyte.gz"),
            gz(&idx3(2, 28, 28, &pixels)),
        )
        .unwrap();
        std::fs::write(dir.path().join("train-labels-idx1-ubyte"), idx1(&[3, 8])).unwrap();
        let mut opts = MnistOptions::new(dir.path());
        opts.split = MnistSplit::Train;
        let ds = load_mnist(&opts).unwrap();
        assert_eq!(ds.data.shape(), vec![2, 1, 28, 28]);
        assert_eq!(ds.labels, Some(vec![3, 8]));
        assert_eq!(ds.data.item(0)[0], 1.0);
        assert_eq!(ds.data.item(0)[1], -1.0);
        assert!((ds.data.item(1)[5] - (51.0 / 127.5 - 1.0)).abs() < 1e-6);
        assert_eq!(ds.sources.len(), 2);
        assert!(ds.sources[0].path.ends_with("train-images-idx3-ubyte.gz"));

        opts.resolution = 32;
        let padded = load_mnist(&opts).unwrap();
        assert_eq!(padded.data.shape(), vec![2, 1, 32, 32]);
        let img = padded.data.item(0);
        assert_eq!(img[2 * 32 + 2], 1.0); // pixel (0, 0) moved to (2, 2)
        assert_eq!(img[0], -1.0);
        assert_eq!(img.iter().filter(|&&v| v > -1.0).count(), 1);

        opts.resolution = 14;
        opts.count = Some(1);
        let small = load_mnist(&opts).unwrap();
        assert_eq!(small.data.shape(), vec![1, 1, 14, 14]);
        assert!(small.data.values().iter().all(|v| (-1.0..=1.0).contains(v)));

        opts.count = Some(3);
        let err = load_mnist(&opts).unwrap_err().to_string();
        assert!(err.contains("count 3 exceeds the 2 images"), "{err}");
    }

    #[test]
    fn bad_magic_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (_, lbl) = tiny();
        // A label file where an image file is expected.
        let p = dir.path().join("t10k-images-idx3-ubyte");
        std::fs::write(&p, &lbl).unwrap();
        std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), &lbl).unwrap();
        let err = load_mnist(&MnistOptions::new(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains("bad magic number 0x00000801"), "{err}");

        let g = dir.path().join("junk.gz");
        std::fs::write(&g, gz(b"\x00\x00\x09\x03rest")).unwrap();
        let err = read_idx_images(&g).unwrap_err().to_string();
        assert!(
            err.contains("junk.gz") && err.contains("bad magic"),
            "{err}"
        );
    }

    #[test]
    fn wrong_sizes_are_rejected() {
        let p = Path::new("some/file-idx3");
        let mut img = idx3(2, 2, 2, &[0; 8]);
        assert!(parse_idx_images(p, &img).is_ok());
        img.pop();
        let err = parse_idx_images(p, &img).unwrap_err().to_string();
        assert!(
            err.contains("some/file-idx3") && err.contains("2 images of 2 x 2"),
            "{err}"
        );
        let err = parse_idx_labels(p, &idx1(&[1, 2])[..9])
            .unwrap_err()
            .to_string();
        assert!(err.contains("header says 2 labels"), "{err}");
        let err = parse_idx_labels(p, &[0, 0]).unwrap_err().to_string();
        assert!(err.contains("too short"), "{err}");
    }

    #[test]
    fn missing_files_list_what_was_tried() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_mnist(&MnistOptions::new(dir.path()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("t10k-images-idx3-ubyte.gz"), "{err}");
    }

    #[test]
    fn reads_the_shipped_t10k_set() {
        let ds = load_mnist(&MnistOptions::new(shipped_root())).unwrap();
        assert_eq!(ds.data.shape(), vec![10000, 1, 28, 28]);
        let labels = ds.labels.as_ref().unwrap();
        assert_eq!(labels[0], 7);
        assert_eq!(labels[1], 2);
        let mut counts = [0usize; 10];
        for &l in labels {
            counts[l as usize] += 1;
        }
        assert_eq!(
            counts,
            [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
        );
        let s = super::super::stats(ds.data.values());
        assert_eq!((s.min, s.max), (-1.0, 1.0));
        // Pixel mean 33.791 of 255 in the README of the data.
        assert!((s.mean - (33.791 / 127.5 - 1.0)).abs() < 1e-3, "{}", s.mean);
        assert_eq!(
            ds.sources[0].blake3,
            blake3::hash(&std::fs::read(shipped_root().join("t10k-images-idx3-ubyte.gz")).unwrap())
                .to_hex()
                .to_string()
        );
        assert_eq!(ds.sources[0].bytes, 1648877);
    }

    #[test]
    fn split_parses() {
        assert_eq!("t10k".parse::<MnistSplit>().unwrap(), MnistSplit::T10k);
        assert_eq!("test".parse::<MnistSplit>().unwrap(), MnistSplit::T10k);
        assert_eq!("train".parse::<MnistSplit>().unwrap(), MnistSplit::Train);
        assert!("val".parse::<MnistSplit>().is_err());
    }
}

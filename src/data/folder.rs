//! A folder of PNG and JPEG images.
//!
//! Files are taken in sorted path order. Each is converted to RGB or
//! grayscale, resized (bilinear, in f32) so that its shorter side is
//! `resolution`, centre-cropped to `resolution` x `resolution` and scaled to
//! [-1, 1]. With `recursive`, images in subfolders are read too, and when
//! every image lies in a subfolder of the root (the `root/<class>/...`
//! layout), the label of an image is the index of its top-level subfolder
//! among the sorted names of those subfolders.

use std::fs;
use std::path::{Path, PathBuf};

use image::{imageops, ImageBuffer, Pixel};

use super::{read_file, DataError, DataTensor, Dataset, Result, SourceFile};

/// Parameters of [`load_image_folder`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageFolderOptions {
    pub root: PathBuf,
    /// Output side length.
    pub resolution: usize,
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Read subfolders too (and take labels from their names).
    pub recursive: bool,
    /// Keep only the first `count` images (in sorted order).
    pub count: Option<usize>,
}

impl ImageFolderOptions {
    /// RGB, not recursive, all images.
    pub fn new(root: impl Into<PathBuf>, resolution: usize) -> Self {
        ImageFolderOptions {
            root: root.into(),
            resolution,
            channels: 3,
            recursive: false,
            count: None,
        }
    }
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        .unwrap_or(false)
}

fn collect(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| DataError::io(dir, e))?;
        let path = entry.path();
        let ft = fs::metadata(&path).map_err(|e| DataError::io(&path, e))?;
        if ft.is_dir() {
            if recursive {
                collect(&path, true, out)?;
            }
        } else if ft.is_file() && is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The images of a folder, as [`list_images`] finds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageList {
    /// Image files in sorted path order.
    pub files: Vec<PathBuf>,
    /// Label of each file, when every file lies in a subfolder of the root.
    pub labels: Option<Vec<i64>>,
    /// Sorted names of the top-level subfolders (the classes); empty without labels.
    pub classes: Vec<String>,
}

/// The image files of a folder in sorted order, with their labels when every
/// file lies in a subfolder (see the module notes), and the class names.
pub fn list_images(root: &Path, recursive: bool) -> Result<ImageList> {
    if !root.is_dir() {
        return Err(DataError::NotFound {
            what: "image folder".into(),
            tried: vec![root.to_path_buf()],
        });
    }
    let mut files = Vec::new();
    collect(root, recursive, &mut files)?;
    files.sort();
    if files.is_empty() {
        return Err(DataError::Invalid(format!(
            "{}: no PNG or JPEG files{}",
            root.display(),
            if recursive { "" } else { " (not recursive)" }
        )));
    }
    let top: Vec<Option<String>> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(root).expect("listed under root");
            let mut comps = rel.components();
            let first = comps.next()?;
            comps.next()?; // a file directly in root has a single component
            Some(first.as_os_str().to_string_lossy().into_owned())
        })
        .collect();
    if !top.iter().all(Option::is_some) {
        return Ok(ImageList {
            files,
            labels: None,
            classes: vec![],
        });
    }
    let mut classes: Vec<String> = top.iter().flatten().cloned().collect();
    classes.sort();
    classes.dedup();
    let labels = top
        .iter()
        .flatten()
        .map(|t| classes.binary_search(t).expect("class listed") as i64)
        .collect();
    Ok(ImageList {
        files,
        labels: Some(labels),
        classes,
    })
}

/// Resizes so the shorter side is `res`, then centre-crops to `res` x `res`.
fn fit<P>(img: &ImageBuffer<P, Vec<f32>>, res: u32) -> ImageBuffer<P, Vec<f32>>
where
    P: Pixel<Subpixel = f32> + 'static,
{
    let (w, h) = img.dimensions();
    let (nw, nh) = if w <= h {
        (
            res,
            ((h as f64 * res as f64 / w as f64).round() as u32).max(res),
        )
    } else {
        (
            ((w as f64 * res as f64 / h as f64).round() as u32).max(res),
            res,
        )
    };
    let resized = if (nw, nh) == (w, h) {
        img.clone()
    } else {
        imageops::resize(img, nw, nh, imageops::FilterType::Triangle)
    };
    imageops::crop_imm(&resized, (nw - res) / 2, (nh - res) / 2, res, res).to_image()
}

/// Pushes an HWC image with values in [0, 1] as CHW values in [-1, 1].
fn push_chw(values: &mut Vec<f32>, hwc: &[f32], c: usize) {
    let hw = hwc.len() / c;
    for ch in 0..c {
        values.extend((0..hw).map(|i| (hwc[i * c + ch] * 2.0 - 1.0).clamp(-1.0, 1.0)));
    }
}

/// Loads a folder of PNG/JPEG images as [N, channels, R, R] in [-1, 1].
pub fn load_image_folder(opts: &ImageFolderOptions) -> Result<Dataset> {
    if opts.channels != 1 && opts.channels != 3 {
        return Err(DataError::Invalid(format!(
            "channels must be 1 or 3, got {}",
            opts.channels
        )));
    }
    if opts.resolution == 0 {
        return Err(DataError::Invalid("resolution must be at least 1".into()));
    }
    let ImageList {
        mut files,
        mut labels,
        classes,
    } = list_images(&opts.root, opts.recursive)?;
    let classes = labels.as_ref().map(|_| classes.len());
    if let Some(count) = opts.count {
        if count == 0 {
            return Err(DataError::Invalid("count must be at least 1".into()));
        }
        if count > files.len() {
            return Err(DataError::Invalid(format!(
                "count {count} exceeds the {} images in {}",
                files.len(),
                opts.root.display()
            )));
        }
        files.truncate(count);
        if let Some(l) = &mut labels {
            l.truncate(count);
        }
    }
    let res = opts.resolution;
    let c = opts.channels;
    let mut values = Vec::with_capacity(files.len() * c * res * res);
    let mut sources = Vec::with_capacity(files.len());
    for path in &files {
        let bytes = read_file(path)?;
        let img = image::load_from_memory(&bytes).map_err(|e| DataError::image(path, e))?;
        if img.width() == 0 || img.height() == 0 {
            return Err(DataError::format(path, "image is empty"));
        }
        if c == 3 {
            let out = fit(&img.to_rgb32f(), res as u32);
            push_chw(&mut values, out.as_raw(), 3);
        } else {
            let out = fit(&img.to_luma32f(), res as u32);
            push_chw(&mut values, out.as_raw(), 1);
        }
        sources.push(SourceFile::from_bytes(path, &bytes));
    }
    Ok(Dataset {
        data: DataTensor::Images {
            n: files.len(),
            c,
            h: res,
            w: res,
            values,
        },
        labels,
        classes,
        sources,
        mixture: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{Rgb, RgbImage};

    fn solid(path: &Path, w: u32, h: u32, rgb: [u8; 3]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(w, h, Rgb(rgb)).save(path).unwrap();
    }

    #[test]
    fn flat_folder_rgb_and_gray() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        solid(&d.join("b.png"), 8, 8, [255, 0, 0]);
        solid(&d.join("a.png"), 12, 6, [0, 255, 0]);
        solid(&d.join("c.jpg"), 6, 6, [255, 255, 255]);
        fs::write(d.join("notes.txt"), "ignored").unwrap();
        solid(&d.join("sub/z.png"), 4, 4, [0, 0, 0]); // not read: not recursive

        let ds = load_image_folder(&ImageFolderOptions::new(d, 4)).unwrap();
        assert_eq!(ds.data.shape(), vec![3, 3, 4, 4]);
        assert_eq!(ds.labels, None);
        assert_eq!(ds.classes, None);
        let names: Vec<_> = ds.sources.iter().map(|s| s.path.clone()).collect();
        assert!(names[0].ends_with("a.png") && names[1].ends_with("b.png"));
        assert!(names[2].ends_with("c.jpg"));
        // a.png: pure green, every pixel.
        let a = ds.data.item(0);
        let near = |v: f32, t: f32| (v - t).abs() < 1e-5;
        assert!(a[..16].iter().all(|&v| near(v, -1.0)), "{a:?}");
        assert!(a[16..32].iter().all(|&v| near(v, 1.0)), "{a:?}");
        assert!(a[32..].iter().all(|&v| near(v, -1.0)), "{a:?}");
        // c.jpg: white (JPEG is lossy, so nearly).
        assert!(ds.data.item(2).iter().all(|&v| v > 0.95));

        let mut opts = ImageFolderOptions::new(d, 4);
        opts.channels = 1;
        let g = load_image_folder(&opts).unwrap();
        assert_eq!(g.data.shape(), vec![3, 1, 4, 4]);
        // Red to luma: 0.2126 (Rec. 709 weights in the image crate).
        let r = g.data.item(1)[0];
        assert!((r - (0.2126 * 2.0 - 1.0)).abs() < 0.02, "{r}");
    }

    #[test]
    fn resize_shorter_side_then_centre_crop() {
        let dir = tempfile::tempdir().unwrap();
        // 12 x 4: left third black, middle third white, right third black.
        let mut img = RgbImage::new(12, 4);
        for y in 0..4 {
            for x in 4..8 {
                img.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
        img.save(dir.path().join("wide.png")).unwrap();
        let mut opts = ImageFolderOptions::new(dir.path(), 4);
        opts.channels = 1;
        let ds = load_image_folder(&opts).unwrap();
        // Shorter side already 4: no resize, the crop keeps the white middle.
        assert!(ds.data.values().iter().all(|&v| v == 1.0));
        opts.resolution = 2;
        let ds = load_image_folder(&opts).unwrap();
        assert_eq!(ds.data.shape(), vec![1, 1, 2, 2]);
        assert!(
            ds.data.values().iter().all(|&v| v > 0.0),
            "{:?}",
            ds.data.values()
        );
    }

    #[test]
    fn labels_from_sorted_subfolders() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        solid(&d.join("dog/1.png"), 5, 5, [10, 10, 10]);
        solid(&d.join("cat/2.png"), 5, 5, [20, 20, 20]);
        solid(&d.join("cat/1.jpeg"), 5, 5, [30, 30, 30]);
        solid(&d.join("dog/deep/x.PNG"), 5, 5, [40, 40, 40]);
        let mut opts = ImageFolderOptions::new(d, 3);
        opts.recursive = true;
        let ds = load_image_folder(&opts).unwrap();
        assert_eq!(ds.len(), 4);
        assert_eq!(ds.classes, Some(2));
        // Sorted: cat/1.jpeg, cat/2.png, dog/1.png, dog/deep/x.PNG
        assert_eq!(ds.labels, Some(vec![0, 0, 1, 1]));
        assert!(ds.sources[3].path.ends_with("x.PNG"));
        opts.count = Some(3);
        let ds = load_image_folder(&opts).unwrap();
        assert_eq!(ds.labels, Some(vec![0, 0, 1]));

        // An image directly in the root: no labels.
        solid(&d.join("loose.png"), 5, 5, [0, 0, 0]);
        opts.count = None;
        let ds = load_image_folder(&opts).unwrap();
        assert_eq!((ds.len(), ds.labels.as_ref()), (5, None));
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("broken.png");
        fs::write(&bad, b"not a png").unwrap();
        let err = load_image_folder(&ImageFolderOptions::new(dir.path(), 4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("broken.png"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        let err = load_image_folder(&ImageFolderOptions::new(empty.path(), 4))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no PNG or JPEG"), "{err}");
        let mut opts = ImageFolderOptions::new(dir.path(), 4);
        opts.channels = 2;
        assert!(load_image_folder(&opts).is_err());
    }
}

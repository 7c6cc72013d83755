//! `quickv bench plot`: latency-by-percentile curves, one per run, like HdrHistogram's plotter.
//!
//! The x axis is `log10(1 / (1 - percentile))`, so 90 %, 99 %, 99.9 %, 99.99 % are evenly spaced
//! and the tail, where systems differ, gets as much room as the median. The y axis is latency in
//! milliseconds, linear (HdrHistogram's default) or logarithmic (`--log-y`, for curves that differ
//! by orders of magnitude, e.g. quickv against Redis with `WAIT`).
//!
//! Input is `.hgrm` files, ours or Java's; a directory stands for every `.hgrm` in it (the files a
//! `--hdr-out` run writes), labelled with the run's `report.json` label when present. Output is
//! both SVG (text stays text) and PNG (for places that do not show SVG). The PNG needs a TrueType
//! font to draw its labels; the usual system locations are searched, or `QUICKV_PLOT_FONT` names
//! one.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::hdr::{parse_hgrm, PercentilePoint};

/// Image size, pixels.
const SIZE: (u32, u32) = (1200, 720);
/// The furthest percentile shown: 99.9999 % (x = 6).
const MAX_NINES: f64 = 6.0;
/// Where fonts usually are on Linux and macOS; the first that parses is used.
const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];
/// Curve colours: distinguishable, and the first two (quickv, Redis in compare.sh) contrast.
const COLOURS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One curve: a name and its percentile points.
#[derive(Clone, Debug)]
pub struct Curve {
    /// Legend text.
    pub label: String,
    /// Points in increasing quantile order.
    pub points: Vec<PercentilePoint>,
}

/// What to draw and where.
#[derive(Clone, Debug)]
pub struct PlotOptions {
    /// Output path; its extension is replaced by `.svg` and `.png`.
    pub out: PathBuf,
    /// Chart title.
    pub title: String,
    /// Logarithmic latency axis.
    pub log_y: bool,
}

/// Reads the curves named by `inputs` (files or directories), in the order given.
pub fn load_curves(inputs: &[PathBuf]) -> anyhow::Result<Vec<Curve>> {
    let mut curves = Vec::new();
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .with_context(|| format!("cannot read {}", input.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "hgrm"))
                .filter(|p| p.file_stem().is_some_and(|s| s != "send-lag"))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{} holds no .hgrm file", input.display());
            }
            let base = run_label(input);
            let several = files.len() > 1;
            for file in files {
                let op = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let label = if several {
                    format!("{base} {op}")
                } else {
                    base.clone()
                };
                curves.push(read_curve(&file, label)?);
            }
        } else {
            let label = input
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| input.display().to_string());
            curves.push(read_curve(input, label)?);
        }
    }
    Ok(curves)
}

/// The label of a run directory: `report.json`'s `label`, else the directory name.
fn run_label(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("report.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v.get("label")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string())
        })
}

fn read_curve(path: &Path, label: String) -> anyhow::Result<Curve> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let points = parse_hgrm(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(Curve { label, points })
}

/// Where a quantile sits on the x axis: `log10(1 / (1 - q))`, capped at 6 (99.9999 %).
pub fn x_of(quantile: f64) -> f64 {
    if quantile >= 1.0 {
        return MAX_NINES;
    }
    (1.0 / (1.0 - quantile)).log10().min(MAX_NINES)
}

/// The percentile label of an x position: 0 → `0%`, 2 → `99%`, 3 → `99.9%`.
pub fn percentile_label(x: f64) -> String {
    let pct = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as i32 - 2).clamp(0, 6) as usize;
    format!("{pct:.decimals$}%")
}

/// Draws `curves` into `<out>.svg` and `<out>.png`; returns the files written.
pub fn plot(curves: &[Curve], opts: &PlotOptions) -> anyhow::Result<Vec<PathBuf>> {
    if curves.is_empty() {
        bail!("nothing to plot");
    }
    ensure_font()?;
    if let Some(parent) = opts.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let svg = opts.out.with_extension("svg");
    let png = opts.out.with_extension("png");
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        draw(&root, curves, opts)?;
        root.present()
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", svg.display()))?;
    }
    let mut pixels = vec![0u8; SIZE.0 as usize * SIZE.1 as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, SIZE).into_drawing_area();
        draw(&root, curves, opts)?;
        root.present()
            .map_err(|e| anyhow::anyhow!("cannot render the PNG: {e}"))?;
    }
    write_png(&png, &pixels)?;
    Ok(vec![svg, png])
}

/// Registers a TrueType font for text (plotters' pure-Rust text path needs one), once.
fn ensure_font() -> anyhow::Result<()> {
    static FONT: OnceLock<Result<(), String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("QUICKV_PLOT_FONT").ok();
        let candidates = env
            .iter()
            .map(String::as_str)
            .chain(FONT_CANDIDATES.iter().copied());
        for path in candidates {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            // Fonts must outlive every chart; one font per process is a few hundred KiB, once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
        Err(
            "no TrueType font found for the plot labels: install fonts-dejavu-core, or set \
             QUICKV_PLOT_FONT to a .ttf file"
                .into(),
        )
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    curves: &[Curve],
    opts: &PlotOptions,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("plot failed: {e}");
    root.fill(&WHITE).map_err(err)?;
    let max_x = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|p| p.quantile < 1.0)
        .map(|p| x_of(p.quantile))
        .fold(2.0f64, f64::max)
        .ceil()
        .min(MAX_NINES);
    let max_y = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .filter(|p| x_of(p.quantile) <= max_x)
        .map(|p| p.value_ms)
        .fold(0.0f64, f64::max)
        .max(0.001);
    let min_y = curves
        .iter()
        .flat_map(|c| c.points.iter())
        .map(|p| p.value_ms)
        .filter(|v| *v > 0.0)
        .fold(f64::INFINITY, f64::min)
        .min(max_y);
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(&opts.title, ("sans-serif", 26))
        .margin(20)
        .margin_right(50)
        .x_label_area_size(50)
        .y_label_area_size(80);
    let x_range = 0.0..max_x;
    let x_labels = max_x as usize + 1;
    if opts.log_y {
        let lo = (min_y / 1.5).max(0.0005);
        let mut chart = builder
            .build_cartesian_2d(x_range, (lo..max_y * 1.5).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(x_labels)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| format!("{y}"))
            .x_desc("percentile")
            .y_desc("latency (ms, log scale)")
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        for (i, curve) in curves.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    series(curve, max_x).map(|(x, y)| (x, y.max(lo))),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(curve.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        legend(&mut chart).map_err(err)?;
    } else {
        let mut chart = builder
            .build_cartesian_2d(x_range, 0.0..max_y * 1.05)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_labels(x_labels)
            .x_label_formatter(&|x| percentile_label(*x))
            .x_desc("percentile")
            .y_desc("latency (ms)")
            .label_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        for (i, curve) in curves.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    series(curve, max_x),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(curve.label.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        legend(&mut chart).map_err(err)?;
    }
    Ok(())
}

/// The plotted points of a curve: quantiles below 1 within the axis (the 100 % point has no
/// finite x; its value is the last point's).
fn series(curve: &Curve, max_x: f64) -> impl Iterator<Item = (f64, f64)> + '_ {
    curve
        .points
        .iter()
        .filter(move |p| p.quantile < 1.0 && x_of(p.quantile) <= max_x)
        .map(|p| (x_of(p.quantile), p.value_ms))
}

fn legend<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
}

/// Encodes RGB8 `pixels` of [`SIZE`] as a PNG file.
fn write_png(path: &Path, pixels: &[u8]) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), SIZE.0, SIZE.1);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .write_image_data(pixels)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writer
        .finish()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_is_logarithmic_in_nines() {
        assert_eq!(x_of(0.0), 0.0);
        assert!((x_of(0.9) - 1.0).abs() < 1e-9);
        assert!((x_of(0.999) - 3.0).abs() < 1e-9);
        assert_eq!(x_of(1.0), MAX_NINES);
        assert_eq!(percentile_label(0.0), "0%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
    }
}

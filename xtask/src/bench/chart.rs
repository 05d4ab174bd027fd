//! `target/bench/chart.png`: production throughput relative to no hook,
//! and how many copies each mirror delivers. Drawn with plotters' bitmap
//! backend; text goes through ab_glyph with a DejaVu font file (Debian's
//! fonts-dejavu-core), so no fontconfig or freetype is involved.

use std::{path::Path, sync::OnceLock};

use anyhow::{Context, Result, anyhow};
use plotters::{
    coord::Shift,
    prelude::*,
    style::text_anchor::{HPos, Pos, VPos},
};

use super::{configs::Config, summary::Summary};

const FONT_FILES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];
const WIDTH: u32 = 1600;
/// The two charts one above the other, each the full width: a dozen and
/// more rows need it for their names.
const HEIGHT: u32 = 1200;
const COLORS: [RGBColor; 3] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
];

/// One group of bars per configuration, one bar per series.
struct Bars<'a> {
    title: &'a str,
    y_label: &'a str,
    series: &'a [&'a str],
    groups: Vec<(&'static str, Vec<Option<f64>>)>,
    /// A dashed reference line (1.0 for ratios).
    reference: Option<f64>,
    value_format: fn(f64) -> String,
}

pub fn draw(s: &Summary, path: &Path) -> Result<()> {
    register_font()?;
    let root = BitMapBackend::new(path, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(HEIGHT / 2);

    let ratios = Bars {
        title: "Production traffic with each configuration, ÷ no hook",
        y_label: "ratio to no hook (median)",
        series: &["UDP 64 B packets/s", "TCP 1 stream", "TCP 4 streams"],
        groups: s
            .configs
            .iter()
            .filter(|c| **c != Config::NoHook)
            .map(|&c| {
                (
                    c.key(),
                    vec![
                        s.ratio(c, |r| r.udp_pps),
                        s.ratio(c, |r| r.tcp1),
                        s.ratio(c, |r| r.tcp4),
                    ],
                )
            })
            .collect(),
        reference: Some(1.0),
        value_format: |v| format!("{v:.2}"),
    };
    bars(&top, &ratios)?;

    let kpps = |v: Option<f64>| v.map(|x| x / 1000.0);
    let copies = Bars {
        title: "Mirrored 64 B UDP: copies delivered (thousands/s)",
        y_label: "k packets/s (median)",
        series: &[
            "copies/s at full rate",
            "knee: highest rate ≥ 99.9% complete",
        ],
        groups: s
            .configs
            .iter()
            .filter(|c| c.mirrors())
            .map(|&c| {
                let r = s.row(c);
                (
                    c.key(),
                    vec![kpps(r.mirrored_pps), kpps(r.knee.map(|k| k.pps))],
                )
            })
            .collect(),
        reference: None,
        value_format: |v| format!("{v:.0}"),
    };
    bars(&bottom, &copies)?;
    root.present()
        .map_err(plot_err)
        .with_context(|| format!("writing {}", path.display()))
}

fn bars(area: &DrawingArea<BitMapBackend<'_>, Shift>, b: &Bars<'_>) -> Result<()> {
    let per = b.series.len() as f64;
    let width = per + 1.0;
    let n = b.groups.len() as f64;
    let top = b
        .groups
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .copied()
        .chain(b.reference)
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.25;
    let mut chart = ChartBuilder::on(area)
        .caption(b.title, ("sans-serif", 20))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..n * width, 0.0..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .y_desc(b.y_label)
        .label_style(("sans-serif", 14))
        .draw()
        .map_err(plot_err)?;
    for (i, name) in b.series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let rects = b.groups.iter().enumerate().filter_map(|(g, (_, vals))| {
            let v = vals.get(i).copied().flatten()?;
            let x0 = g as f64 * width + 0.5 + i as f64;
            Some(Rectangle::new([(x0, 0.0), (x0 + 0.9, v)], color.filled()))
        });
        chart
            .draw_series(rects)
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
        let value_style = TextStyle::from(("sans-serif", 13).into_font())
            .pos(Pos::new(HPos::Center, VPos::Bottom));
        let labels = b.groups.iter().enumerate().filter_map(|(g, (_, vals))| {
            let v = vals.get(i).copied().flatten()?;
            let x = g as f64 * width + 0.95 + i as f64;
            Some(Text::new((b.value_format)(v), (x, v), value_style.clone()))
        });
        chart.draw_series(labels).map_err(plot_err)?;
    }
    if let Some(r) = b.reference {
        chart
            .draw_series(DashedLineSeries::new(
                [(0.0, r), (n * width, r)],
                6,
                4,
                BLACK.stroke_width(1),
            ))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    // Group names under the axis, at each group's centre: `backend_coord`
    // is in the whole image, `area.draw` wants the area's own pixels.
    let name_style =
        TextStyle::from(("sans-serif", 15).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (g, (name, _)) in b.groups.iter().enumerate() {
        let (x, y) = chart.backend_coord(&(g as f64 * width + width / 2.0, 0.0));
        let (x0, y0) = area.get_base_pixel();
        area.draw(&Text::new(*name, (x - x0, y - y0 + 8), name_style.clone()))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Registers DejaVu Sans as "sans-serif", once per process.
fn register_font() -> Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let path = FONT_FILES
            .iter()
            .find(|p| Path::new(p).exists())
            .ok_or_else(|| {
                format!(
                    "no font for the chart's text: none of {FONT_FILES:?} exists \
                     (`cargo xtask setup` installs fonts-dejavu-core)"
                )
            })?;
        let bytes = std::fs::read(path).map_err(|e| format!("reading {path}: {e}"))?;
        // plotters keeps fonts for the life of the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{path} is not a font plotters can read"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

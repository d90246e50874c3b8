//! A tuning run's curves as an SVG picture, drawn with plotters: the training loss against step
//! and, with a dev set, the dev metric against step below it, the best step marked in both.
//! `promptd tune --report` writes it next to the JSON; `GET /v1/tune-jobs/{id}/curve.svg`
//! draws a job's as it runs.
use std::ops::Range;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use super::error::TuneError;
use super::tuner::Tuner;

/// A run's history as drawn: what a [`Tuner`] has recorded so far.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Curve {
    /// The dev metric's name.
    pub metric: String,
    /// Steps the run takes unless it stops early: where the step axis ends.
    pub total_steps: usize,
    /// (step, training loss) of each optimizer step.
    pub loss: Vec<(usize, f64)>,
    /// (step, dev metric) of each evaluation.
    pub dev: Vec<(usize, f64)>,
    /// (step, dev metric) of the best evaluation: the prompt kept.
    pub best: Option<(usize, f64)>,
}

const SIZE: (u32, u32) = (800, 560);
/// Points per series at most: more than the plot is wide in pixels only adds bytes.
const MAX_POINTS: usize = 1000;
const FONT: &str = "sans-serif";
/// Colours of the series (matplotlib's first three, so the picture reads like a notebook's).
pub const LOSS_COLOR: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
/// See [`LOSS_COLOR`].
pub const DEV_COLOR: RGBColor = RGBColor(0xff, 0x7f, 0x0e);
/// See [`LOSS_COLOR`].
pub const BEST_COLOR: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;
type PlotError = DrawingAreaErrorKind<std::io::Error>;

/// One panel: a series against step, and the best step's line.
struct Panel<'p> {
    name: String,
    color: RGBColor,
    points: &'p [(f64, f64)],
    steps: Range<f64>,
    values: Range<f64>,
    /// The best step, with its legend and, in the dev panel, the point to ring.
    best: Option<(f64, String, Option<f64>)>,
    legend_at: SeriesLabelPosition,
}

impl Curve {
    /// An empty curve for a run of `total_steps` scored by `metric`.
    pub fn new(metric: &str, total_steps: usize) -> Self {
        Self {
            metric: metric.to_string(),
            total_steps,
            ..Self::default()
        }
    }

    /// The run's history so far.
    pub fn of(tuner: &Tuner) -> Self {
        let mut curve = Self::new(&tuner.settings().metric.to_string(), tuner.total_steps());
        curve.catch_up(tuner);
        curve
    }

    /// Appends the points `tuner` has recorded since the last call: a job's live curve costs
    /// a point per step, not a copy of the history.
    pub fn catch_up(&mut self, tuner: &Tuner) {
        let (loss, dev) = (tuner.train_loss(), tuner.dev_metrics());
        self.loss
            .extend_from_slice(loss.get(self.loss.len()..).unwrap_or_default());
        self.dev
            .extend_from_slice(dev.get(self.dev.len()..).unwrap_or_default());
        self.total_steps = tuner.total_steps();
        self.best = tuner.best();
    }

    /// The picture as an SVG document, `title` on top. Non-finite values are left out; a
    /// curve with no steps yet is an empty chart that says so.
    pub fn to_svg(&self, title: &str) -> Result<String, TuneError> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
            self.draw(&root, title)?;
            root.present()?;
        }
        Ok(svg)
    }

    fn draw(&self, root: &Area, title: &str) -> Result<(), PlotError> {
        root.fill(&WHITE)?;
        let area = root.titled(title, (FONT, 20))?;
        let loss = thin(finite(&self.loss));
        let dev = thin(finite(&self.dev));
        let last = self.loss.iter().chain(&self.dev).map(|(s, _)| *s).max();
        let steps = 0.0..self.total_steps.max(last.unwrap_or(0)).max(1) as f64;
        let best_step = self.best.map(|(s, _)| s as f64);
        let loss_panel = Panel {
            name: "training loss".into(),
            color: LOSS_COLOR,
            points: &loss,
            steps: steps.clone(),
            values: padded(&loss, None),
            best: best_step.map(|s| (s, format!("best step {s}"), None)),
            legend_at: SeriesLabelPosition::UpperRight,
        };
        if dev.is_empty() {
            panel(&area, &loss_panel)?;
        } else {
            let half = area.dim_in_pixel().1 / 2;
            let (top, bottom) = area.split_vertically(half);
            panel(&top, &loss_panel)?;
            let best = self
                .best
                .filter(|(_, v)| v.abs() <= MAX_VALUE)
                .map(|(s, v)| {
                    let label = format!("best {} {v:.3} at step {s}", self.metric);
                    (s as f64, label, Some(v))
                });
            let dev_panel = Panel {
                name: format!("dev {}", self.metric),
                color: DEV_COLOR,
                points: &dev,
                steps,
                values: padded(&dev, Some(0.0..1.0)),
                best,
                legend_at: SeriesLabelPosition::LowerRight,
            };
            panel(&bottom, &dev_panel)?;
        }
        if loss.is_empty() && dev.is_empty() {
            let (w, h) = area.dim_in_pixel();
            let grey = BLACK.mix(0.6);
            let style = TextStyle::from((FONT, 18).into_font())
                .color(&grey)
                .pos(Pos::new(HPos::Center, VPos::Center));
            area.draw_text("no steps yet", &style, (w as i32 / 2, h as i32 / 2))?;
        }
        Ok(())
    }
}

fn panel(area: &Area, p: &Panel) -> Result<(), PlotError> {
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(p.steps.clone(), p.values.clone())?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(p.name.as_str())
        .x_label_formatter(&|x| format!("{x:.0}"))
        .label_style((FONT, 13))
        .light_line_style(BLACK.mix(0.05))
        .draw()?;
    let color = p.color;
    if !p.points.is_empty() {
        chart
            .draw_series(LineSeries::new(
                p.points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(p.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 4), (x + 14, y + 4)], color.filled()));
    }
    // A lone point draws no line: ring it so it shows.
    if let [point] = p.points {
        chart.draw_series(std::iter::once(Circle::new(*point, 4, color.filled())))?;
    }
    if let Some((step, label, value)) = &p.best {
        let (step, y) = (*step, &p.values);
        chart
            .draw_series(DashedLineSeries::new(
                [(step, y.start), (step, y.end)],
                6,
                4,
                BEST_COLOR.stroke_width(2),
            ))?
            .label(label.as_str())
            .legend(|(x, y)| Rectangle::new([(x, y - 1), (x + 14, y + 1)], BEST_COLOR.filled()));
        if let Some(v) = value {
            chart.draw_series(std::iter::once(Circle::new(
                (step, *v),
                6,
                BEST_COLOR.filled(),
            )))?;
        }
    }
    if p.points.is_empty() {
        return Ok(());
    }
    chart
        .configure_series_labels()
        .position(p.legend_at.clone())
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()
}

/// Values beyond this magnitude are not drawn: no loss or metric is that large, and plotters
/// never returns from laying out an axis whose range overflows (NaN or infinite ends).
const MAX_VALUE: f64 = 1e15;

/// The points whose value can be drawn (a diverged step's NaN or infinite loss is left out).
fn finite(points: &[(usize, f64)]) -> Vec<(f64, f64)> {
    points
        .iter()
        .filter(|(_, v)| v.abs() <= MAX_VALUE)
        .map(|&(s, v)| (s as f64, v))
        .collect()
}

/// At most [`MAX_POINTS`] points: each run of consecutive points becomes its lowest and its
/// highest, in step order, so spikes survive the thinning.
fn thin(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let per = points.len().div_ceil(MAX_POINTS / 2);
    let mut out = Vec::with_capacity(MAX_POINTS);
    for run in points.chunks(per) {
        let by_value = |a: &&(f64, f64), b: &&(f64, f64)| a.1.total_cmp(&b.1);
        let lo = run.iter().min_by(by_value).copied();
        let hi = run.iter().max_by(by_value).copied();
        if let (Some(lo), Some(hi)) = (lo, hi) {
            let (first, second) = if lo.0 <= hi.0 { (lo, hi) } else { (hi, lo) };
            out.push(first);
            if second != first {
                out.push(second);
            }
        }
    }
    out
}

/// The values' range with a margin, widened to `at_least` (a metric's 0..1), never empty.
fn padded(points: &[(f64, f64)], at_least: Option<Range<f64>>) -> Range<f64> {
    let (lo, hi) = points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), (_, v)| {
            (lo.min(*v), hi.max(*v))
        });
    let (lo, hi) = match at_least {
        Some(r) => (lo.min(r.start), hi.max(r.end)),
        None if lo > hi => (0.0, 1.0),
        None => (lo, hi),
    };
    let margin = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.1
    };
    lo - margin..hi + margin
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Point counts of the polylines stroked in `color`.
    fn polylines(svg: &str, color: RGBColor) -> Vec<usize> {
        let stroke = format!("stroke=\"#{:02X}{:02X}{:02X}\"", color.0, color.1, color.2);
        svg.split("<polyline")
            .skip(1)
            .map(|tag| &tag[..tag.find("/>").unwrap()])
            .filter(|tag| tag.contains(&stroke))
            .map(|tag| {
                let at = tag.find("points=\"").unwrap() + "points=\"".len();
                let end = at + tag[at..].find('"').unwrap();
                tag[at..end].split_whitespace().count()
            })
            .collect()
    }

    /// `curve`'s picture, or a failure if drawing does not return (plotters loops forever on
    /// an axis whose range overflows: what [`finite`] keeps out).
    fn draw(curve: &Curve, title: &str) -> String {
        let (tx, rx) = std::sync::mpsc::channel();
        let (curve, title) = (curve.clone(), title.to_string());
        std::thread::spawn(move || tx.send(curve.to_svg(&title).unwrap()));
        rx.recv_timeout(std::time::Duration::from_secs(60))
            .expect("drawing did not return")
    }

    fn well_formed(svg: &str) {
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);
        assert!(svg.trim_end().ends_with("</svg>"));
        let opened = svg.matches("<text").count();
        assert_eq!(opened, svg.matches("</text>").count());
    }

    fn run() -> Curve {
        Curve {
            metric: "accuracy".into(),
            total_steps: 40,
            loss: (1..=30).map(|s| (s, 3.0 / s as f64)).collect(),
            dev: vec![(0, 0.25), (10, 0.5), (20, 0.75), (30, 0.7)],
            best: Some((20, 0.75)),
        }
    }

    #[test]
    fn a_run_with_dev_draws_both_series_and_marks_the_best_step() {
        let svg = draw(&run(), "a run");
        well_formed(&svg);
        assert_eq!(polylines(&svg, LOSS_COLOR), vec![30]);
        assert_eq!(polylines(&svg, DEV_COLOR), vec![4]);
        // The best step's line crosses both panels (drawn as dashes), ringed on the dev curve.
        assert!(polylines(&svg, BEST_COLOR).len() >= 2);
        assert!(svg.contains("best accuracy 0.750 at step 20"), "{svg}");
        assert!(svg.contains("<circle"));
        assert!(svg.contains(">a run<") || svg.contains("a run\n"), "{svg}");
        assert!(svg.contains("dev accuracy"));
    }

    #[test]
    fn without_dev_only_the_loss_is_drawn() {
        let mut c = run();
        (c.dev, c.best) = (Vec::new(), None);
        let svg = draw(&c, "loss only");
        well_formed(&svg);
        assert_eq!(polylines(&svg, LOSS_COLOR), vec![30]);
        assert!(polylines(&svg, DEV_COLOR).is_empty());
        assert!(polylines(&svg, BEST_COLOR).is_empty());
        assert!(!svg.contains("dev accuracy"));
    }

    #[test]
    fn a_single_step_and_no_steps_still_draw() {
        let one = Curve {
            loss: vec![(1, 0.5)],
            ..Curve::new("accuracy", 1)
        };
        let svg = draw(&one, "one step");
        well_formed(&svg);
        assert_eq!(polylines(&svg, LOSS_COLOR), vec![1]);
        assert!(svg.contains("<circle"));
        let none = draw(&Curve::new("accuracy", 0), "nothing yet");
        well_formed(&none);
        assert!(none.contains("nothing yet") && none.contains("no steps yet"));
        assert!(polylines(&none, LOSS_COLOR).is_empty());
    }

    #[test]
    fn non_finite_and_absurd_values_are_left_out() {
        let c = Curve {
            loss: vec![
                (1, 2.0),
                (2, f64::NAN),
                (3, f64::INFINITY),
                (4, 1.0),
                (5, f64::MAX),
            ],
            dev: vec![(0, f64::NAN), (4, 0.5), (5, -f64::MAX)],
            best: Some((4, 0.5)),
            ..Curve::new("exact-match", 4)
        };
        let svg = draw(&c, "nan");
        well_formed(&svg);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
        assert_eq!(polylines(&svg, LOSS_COLOR), vec![2]);
        assert_eq!(polylines(&svg, DEV_COLOR), vec![1]);
        // Nothing finite at all: an empty chart, not a panic.
        let c = Curve {
            loss: vec![(1, f64::NAN)],
            best: Some((1, f64::NAN)),
            dev: vec![(1, f64::NAN)],
            ..Curve::new("accuracy", 1)
        };
        well_formed(&draw(&c, "all nan"));
        // The largest values still drawn.
        let c = Curve {
            loss: vec![(1, MAX_VALUE), (2, -MAX_VALUE)],
            ..Curve::new("accuracy", 2)
        };
        assert_eq!(polylines(&draw(&c, "huge"), LOSS_COLOR), vec![2]);
    }

    #[test]
    fn long_runs_are_thinned_but_keep_their_spikes() {
        let mut loss: Vec<(usize, f64)> = (1..=20_000).map(|s| (s, 1.0)).collect();
        loss[12_345].1 = 9.0;
        let c = Curve {
            loss,
            ..Curve::new("accuracy", 20_000)
        };
        let thinned = thin(finite(&c.loss));
        assert!(thinned.len() <= MAX_POINTS, "{}", thinned.len());
        assert!(thinned.contains(&(12_346.0, 9.0)));
        assert!(thinned.windows(2).all(|w| w[0].0 < w[1].0));
        let svg = draw(&c, "long");
        assert!(polylines(&svg, LOSS_COLOR)[0] <= MAX_POINTS);
    }
}

use super::panel::stage_color;
use super::*;
use crate::rating::journal::{JournalLine, test_score_line};
use crate::rating::ratings::Ratings;
use crate::rating::results::build;

/// Two tasks: on math two models rise after e1 and one falls back at e3; on bio one model at two stages.
fn tasks() -> Vec<TaskResults> {
    let mut lines: Vec<JournalLine> = Vec::new();
    let mut add = |task: &str, model: &str, stage: &str, values: [[f64; 3]; 3]| {
        for (q, v) in values.into_iter().enumerate() {
            lines.push(test_score_line(
                "ann",
                task,
                model,
                stage,
                &q.to_string(),
                v,
            ));
        }
    };
    // (task, model, stage, three answers' three criteria)
    #[rustfmt::skip]
    let scores: [(&str, &str, &str, [[f64; 3]; 3]); 8] = [
        ("math", "llama-3.1-8b", "base", [[1., 2., 2.], [2., 2., 1.], [1., 2., 3.]]),
        ("math", "llama-3.1-8b", "e1", [[4., 3., 4.], [3., 4., 4.], [4., 3., 4.]]),
        ("math", "llama-3.1-8b", "e3", [[5., 5., 5.], [5., 5., 4.], [5., 5., 5.]]),
        ("math", "qwen-2-7b", "base", [[3., 3., 3.], [3., 2., 3.], [3., 3., 4.]]),
        ("math", "qwen-2-7b", "e1", [[4., 4., 4.], [4., 4., 5.], [4., 4., 4.]]),
        ("math", "qwen-2-7b", "e3", [[2., 2., 3.], [2., 3., 3.], [2., 2., 2.]]),
        ("bio", "qwen-2-7b", "base", [[5., 5., 5.], [5., 4., 5.], [5., 5., 5.]]),
        ("bio", "qwen-2-7b", "e1", [[4., 4., 4.], [4., 5., 4.], [4., 4., 4.]]),
    ];
    for (task, model, stage, values) in scores {
        add(task, model, stage, values);
    }
    build(&Ratings::replay(&lines), &Rubric::default(), &[])
}

fn hex(c: RGBColor) -> String {
    format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2)
}

fn attr(n: &roxmltree::Node, name: &str) -> f64 {
    n.attribute(name).unwrap().parse().unwrap()
}

#[test]
fn the_svg_has_a_panel_per_task_with_labels_legend_and_bars_as_high_as_the_means() {
    let tasks = tasks();
    let text = svg(&tasks, &Rubric::default()).unwrap();
    let doc = roxmltree::Document::parse(&text).unwrap();
    let svg_el = doc.root_element();
    assert_eq!(
        (
            attr(&svg_el, "width") as u32,
            attr(&svg_el, "height") as u32
        ),
        size(&tasks)
    );
    let texts: Vec<String> = doc
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_owned()))
        .collect();
    for wanted in [
        "bio",
        "math",
        "llama-3.1-8b",
        "qwen-2-7b",
        "base",
        "e1",
        "e3",
    ] {
        assert!(texts.iter().any(|t| t == wanted), "{wanted} in {texts:?}");
    }
    assert_eq!(texts.iter().filter(|t| *t == "model").count(), 2);
    assert_eq!(texts.iter().filter(|t| *t == "score (0-5)").count(), 2);
    assert!(texts.iter().any(|t| t == "5") && texts.iter().any(|t| t == "0"));
    let circles: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .collect();
    let legend_dots = circles
        .iter()
        .filter(|n| n.attribute("fill") != Some("none"));
    assert_eq!(legend_dots.count(), 2 + 3, "one dot per stage of each task");
    let intervals = tasks
        .iter()
        .flat_map(|t| &t.cells)
        .filter(|c| c.ci95.is_some());
    assert_eq!(
        circles.len() - 5,
        intervals.count(),
        "an error bar (with a ring at the mean) per interval"
    );

    // Bars: rects filled with a stage's colour; in each panel, height / mean is one constant.
    let math = tasks.iter().find(|t| t.task == "math").unwrap();
    let panel_h = f64::from(size(&tasks).1) / 2.0;
    let mut ratios = Vec::new();
    for (j, stage) in math.stages.iter().enumerate() {
        let mut bars: Vec<(f64, f64)> = doc
            .descendants()
            .filter(|n| n.has_tag_name("rect") && n.attribute("fill") == Some(&hex(stage_color(j))))
            .filter(|n| attr(n, "y") >= panel_h)
            .map(|n| (attr(&n, "x"), attr(&n, "height")))
            .collect();
        bars.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert_eq!(bars.len(), math.models.len(), "{stage}: {bars:?}");
        for (model, (_, height)) in math.models.iter().zip(&bars) {
            ratios.push((height / math.cell(model, stage).unwrap().mean, model, stage));
        }
    }
    let (lo, hi) = ratios.iter().fold((f64::MAX, 0.0f64), |(lo, hi), (r, ..)| {
        (lo.min(*r), hi.max(*r))
    });
    assert!(hi - lo < 1.0, "pixels per point differ: {ratios:?}");
    assert!(lo > 40.0, "bars are tall enough to read: {ratios:?}");
}

#[test]
fn the_png_decodes_at_the_figure_size_and_shows_the_bars() {
    let tasks = tasks();
    let bytes = png(&tasks, &Rubric::default()).unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    assert_eq!((info.width, info.height), size(&tasks));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let rgb: Vec<&[u8]> = pixels[..info.buffer_size()].chunks(3).collect();
    let of = |c: RGBColor| rgb.iter().filter(|p| **p == [c.0, c.1, c.2]).count();
    let dark = rgb.iter().filter(|p| p.iter().all(|v| *v < 80)).count();
    assert!(of(stage_color(1)) > 2000, "e1 bars are drawn");
    assert!(of(WHITE) > rgb.len() / 2, "on a white background");
    assert!(dark > 500, "text and axes are drawn: {dark} dark pixels");
}

#[test]
fn no_ratings_give_a_figure_that_says_so() {
    let text = svg(&[], &Rubric::default()).unwrap();
    assert!(text.contains("No ratings yet."), "{text}");
}

/// Answers checked automatically but not yet rated make no panel, group or legend entry of their own.
#[test]
fn tasks_models_and_stages_only_the_automatic_check_has_are_left_out() {
    use crate::rating::auto::{AutoCell, AutoCheck};
    let mut tasks = tasks();
    tasks[0].models.push("unrated-model".into());
    tasks[0].stages.push("e9".into());
    let mut unrated = tasks[1].clone();
    unrated.task = "unrated-task".into();
    unrated.cells.clear();
    unrated.auto = AutoCheck::Checked(vec![AutoCell::new("qwen-2-7b", "base", 3, 10)]);
    tasks.push(unrated);
    let text = svg(&tasks, &Rubric::default()).unwrap();
    for absent in ["unrated-model", "e9", "unrated-task"] {
        assert!(!text.contains(absent), "{absent} is drawn");
    }
    assert_eq!(size(&rated(&tasks)), size(&tasks[..2]));
    let only_checked = svg(&tasks[2..], &Rubric::default()).unwrap();
    assert!(only_checked.contains("No ratings yet."), "{only_checked}");
}

//! Reading a clip's attributes back from its pixels: every pixel takes its nearest palette
//! colour, the most common colour is the background, and each other colour's largest blob per
//! frame gives an object's area, centroid and outline, hence its shape and motion.

use crate::attributes::{Colour, Motion, Shape};
use crate::render::Clip;
use serde::Serialize;

/// A pixel that belongs to no palette colour.
const NO_COLOUR: u8 = u8::MAX;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DetectorConfig {
    /// Pixels farther than this (Euclidean, in RGB units) from every palette colour belong to
    /// none: edges blended by a codec, or a model's haze.
    pub max_colour_distance: f32,
    /// A colour is an object when its largest blob covers at least this fraction of the frame
    /// in at least half of the frames.
    pub min_area_fraction: f32,
    /// Fill ratio of the bounding box at or above which a symmetric blob is a square (a circle fills 0.785).
    pub square_fill: f32,
    /// Top-to-bottom area balance (the smaller half over the larger) under which a blob is a
    /// triangle (an upright triangle has 1/3, circles and squares 1).
    pub triangle_balance: f32,
    /// End-to-start area ratio beyond which an object that is not translating is growing (or,
    /// inverted, shrinking).
    pub growth_ratio: f32,
    /// Net displacement, as a fraction of the shorter side, under which an object is not translating.
    pub min_travel_fraction: f32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            max_colour_distance: 80.0,
            min_area_fraction: 0.003,
            square_fill: 0.88,
            triangle_balance: 0.6,
            growth_ratio: 1.8,
            min_travel_fraction: 0.05,
        }
    }
}

/// One colour's largest blob in one frame.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Blob {
    pub area: usize,
    pub centroid: (f32, f32),
    /// Area over the bounding box's area.
    pub fill: f32,
    /// The smaller of the blob's top-half and bottom-half areas over the larger.
    pub balance: f32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DetectedObject {
    pub colour: Colour,
    pub shape: Shape,
    /// `None` when the track shows no clear motion (or has fewer than two frames).
    pub motion: Option<Motion>,
    /// The largest blob of the colour per frame; `None` where it is missing or too small.
    pub blobs: Vec<Option<Blob>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Detection {
    /// `None` when no pixel is near any palette colour.
    pub background: Option<Colour>,
    pub objects: Vec<DetectedObject>,
}

fn nearest_colour(rgb: &[u8], palette: &[[f32; 3]; 8], max_distance_squared: f32) -> u8 {
    let mut best = (NO_COLOUR, max_distance_squared);
    for (index, colour) in palette.iter().enumerate() {
        let distance: f32 = rgb.iter().zip(colour).map(|(&v, &c)| (f32::from(v) - c).powi(2)).sum();
        if distance <= best.1 {
            best = (index as u8, distance);
        }
    }
    best.0
}

/// Each colour's largest 4-connected blob in one frame of colour labels.
fn largest_blobs(labels: &[u8], width: usize, height: usize) -> [Option<Blob>; 8] {
    let mut best: [Option<Blob>; 8] = [None; 8];
    let mut seen = vec![false; labels.len()];
    let mut stack = Vec::new();
    let mut pixels = Vec::new();
    for seed in 0..labels.len() {
        let label = labels[seed];
        if seen[seed] || label == NO_COLOUR {
            continue;
        }
        seen[seed] = true;
        stack.push(seed);
        pixels.clear();
        while let Some(p) = stack.pop() {
            pixels.push(p);
            let (x, y) = (p % width, p / width);
            let neighbours = [(x > 0).then(|| p - 1), (x + 1 < width).then(|| p + 1), (y > 0).then(|| p - width), (y + 1 < height).then(|| p + width)];
            for q in neighbours.into_iter().flatten() {
                if !seen[q] && labels[q] == label {
                    seen[q] = true;
                    stack.push(q);
                }
            }
        }
        let slot = &mut best[usize::from(label)];
        if slot.is_some_and(|b| b.area >= pixels.len()) {
            continue;
        }
        let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
        let (mut sum_x, mut sum_y) = (0.0f64, 0.0f64);
        for &p in &pixels {
            let (x, y) = (p % width, p / width);
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            sum_x += x as f64 + 0.5;
            sum_y += y as f64 + 0.5;
        }
        // Rows strictly above or below the box's middle; a middle row (odd heights) counts for neither.
        let middle = (y0 + y1) as f32 / 2.0;
        let top = pixels.iter().filter(|&&p| ((p / width) as f32) < middle).count();
        let bottom = pixels.iter().filter(|&&p| ((p / width) as f32) > middle).count();
        let area = pixels.len();
        *slot = Some(Blob {
            area,
            centroid: ((sum_x / area as f64) as f32, (sum_y / area as f64) as f32),
            fill: area as f32 / ((x1 - x0 + 1) * (y1 - y0 + 1)) as f32,
            balance: if top.max(bottom) == 0 { 1.0 } else { top.min(bottom) as f32 / top.max(bottom) as f32 },
        });
    }
    best
}

fn median(mut values: Vec<f32>) -> f32 {
    values.sort_by(f32::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn classify_shape(blobs: &[Blob], config: &DetectorConfig) -> Shape {
    let balance = median(blobs.iter().map(|b| b.balance).collect());
    let fill = median(blobs.iter().map(|b| b.fill).collect());
    if balance < config.triangle_balance {
        Shape::Triangle
    } else if fill >= config.square_fill {
        Shape::Square
    } else {
        Shape::Circle
    }
}

/// Motion from a track of blobs in frame order: growth, unless the blob travels farther than
/// its size changes; then a vertical path much longer than the net displacement (bouncing);
/// then the net direction.
fn classify_motion(blobs: &[Blob], width: usize, height: usize, config: &DetectorConfig) -> Option<Motion> {
    if blobs.len() < 2 {
        return None;
    }
    // Start and end are averaged over the first and last fifths, which calms codec jitter.
    let ends = (blobs.len() / 5).max(1);
    let mean = |part: &[Blob]| {
        let n = part.len() as f32;
        let sum = part.iter().fold((0.0, 0.0, 0.0), |acc, b| (acc.0 + b.centroid.0, acc.1 + b.centroid.1, acc.2 + b.area as f32));
        (sum.0 / n, sum.1 / n, sum.2 / n)
    };
    let (x0, y0, area0) = mean(&blobs[..ends]);
    let (x1, y1, area1) = mean(&blobs[blobs.len() - ends..]);
    let (dx, dy) = (x1 - x0, y1 - y0);
    let travel = dx.hypot(dy);
    let shorter_side = width.min(height) as f32;
    // A blob that grows with one side fixed moves its centroid by half its change in size; one
    // that travels farther than its whole change in size is moving, whatever its size does (a
    // model's objects swell and shrink as they go).
    let size_change = (area1.sqrt() - area0.sqrt()).abs();
    let translating = travel >= config.min_travel_fraction * shorter_side && travel > size_change;
    if !translating && area1 > area0 * config.growth_ratio {
        return Some(Motion::Growing);
    }
    if !translating && area0 > area1 * config.growth_ratio {
        return Some(Motion::Shrinking);
    }
    // The vertical path on about 17 evenly spaced samples: enough to see two hops, few enough
    // that frame-to-frame jitter does not add up.
    let samples = blobs.len().min(17);
    let vertical_path: f32 = (1..samples)
        .map(|i| {
            let at = |k: usize| blobs[k * (blobs.len() - 1) / (samples - 1)].centroid.1;
            (at(i) - at(i - 1)).abs()
        })
        .sum();
    if vertical_path >= 0.15 * height as f32 && vertical_path > 2.5 * travel.max(1.0) {
        return Some(Motion::Bouncing);
    }
    translating.then(|| Motion::nearest_direction(dx, dy))
}

/// Detects the background and objects of `clip`.
pub fn detect(clip: &Clip, config: &DetectorConfig) -> Detection {
    let palette = Colour::ALL.map(|c| c.rgb().map(f32::from));
    let max_distance_squared = config.max_colour_distance.powi(2);
    let labels: Vec<Vec<u8>> = clip
        .frames
        .iter()
        .map(|frame| frame.chunks_exact(3).map(|rgb| nearest_colour(rgb, &palette, max_distance_squared)).collect())
        .collect();
    let mut counts = [0usize; 8];
    for &label in labels.iter().flatten() {
        if label != NO_COLOUR {
            counts[usize::from(label)] += 1;
        }
    }
    let background = (0..8).filter(|&i| counts[i] > 0).max_by_key(|&i| counts[i]);
    let Some(background) = background else {
        return Detection { background: None, objects: Vec::new() };
    };
    let min_area = (config.min_area_fraction * (clip.width * clip.height) as f32).max(4.0) as usize;
    let per_frame: Vec<[Option<Blob>; 8]> = labels.iter().map(|l| largest_blobs(l, clip.width, clip.height)).collect();
    let objects = Colour::ALL
        .into_iter()
        .filter(|c| c.index() != background)
        .filter_map(|colour| {
            let blobs: Vec<Option<Blob>> = per_frame.iter().map(|frame| frame[colour.index()].filter(|b| b.area >= min_area)).collect();
            let present: Vec<Blob> = blobs.iter().flatten().copied().collect();
            if present.is_empty() || present.len() * 2 < blobs.len() {
                return None;
            }
            Some(DetectedObject {
                colour,
                shape: classify_shape(&present, config),
                motion: classify_motion(&present, clip.width, clip.height, config),
                blobs,
            })
        })
        .collect();
    Detection { background: Some(Colour::ALL[background]), objects }
}

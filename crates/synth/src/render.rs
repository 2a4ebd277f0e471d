//! Drawing a scene's frames. Every object moves along a path over the clip's normalised time,
//! so a clip of hundreds of frames costs only its pixels and shows the same motion, slower.

use crate::attributes::{Motion, Shape};
use crate::rng::Rng;
use crate::scene::{ObjectSpec, SceneSpec};
use crate::SynthError;

/// The smallest side a clip may have: an object needs a few pixels to keep its shape.
pub const MIN_SIDE: usize = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClipSettings {
    pub frames: usize,
    pub width: usize,
    pub height: usize,
    pub fps: u32,
}

/// RGB frames, 8 bits per channel, rows packed (the layout of `vidfarm_video::RgbFrames`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clip {
    pub width: usize,
    pub height: usize,
    pub fps: u32,
    pub frames: Vec<Vec<u8>>,
}

impl Clip {
    /// Checks that every frame holds `width * height` RGB pixels.
    pub fn new(width: usize, height: usize, fps: u32, frames: Vec<Vec<u8>>) -> Result<Self, SynthError> {
        if let Some((index, frame)) = frames.iter().enumerate().find(|(_, f)| f.len() != width * height * 3) {
            return Err(SynthError::Frames(format!("frame {index} has {} bytes, not {width} x {height} x 3", frame.len())));
        }
        Ok(Self { width, height, fps, frames })
    }

    /// Values in [-1, 1] laid out `[3, frames, height, width]`, as the VAE takes and decodes them.
    pub fn to_planar_signed(&self) -> Vec<f32> {
        let plane = self.width * self.height;
        let count = self.frames.len();
        let mut out = vec![0.0; 3 * count * plane];
        for (f, frame) in self.frames.iter().enumerate() {
            for (p, rgb) in frame.chunks_exact(3).enumerate() {
                for (c, &value) in rgb.iter().enumerate() {
                    out[(c * count + f) * plane + p] = f32::from(value) / 127.5 - 1.0;
                }
            }
        }
        out
    }
}

/// How far a path's cross-axis place strays from the middle, as a fraction of its range.
const JITTER: f32 = 0.05;

/// Where an object is at one moment: centre and half-size in pixels.
#[derive(Clone, Copy, Debug)]
struct Pose {
    x: f32,
    y: f32,
    radius: f32,
}

/// An object's path over normalised time `t` in [0, 1], inside its own region of the frame.
struct Path {
    start: Pose,
    end: Pose,
    /// For bouncing: the floor is `start.y`, the hop height this.
    hop: f32,
}

impl Path {
    fn at(&self, t: f32) -> Pose {
        let lerp = |a: f32, b: f32| a + (b - a) * t;
        let mut pose = Pose { x: lerp(self.start.x, self.end.x), y: lerp(self.start.y, self.end.y), radius: lerp(self.start.radius, self.end.radius) };
        if self.hop > 0.0 {
            // Two hops over the clip, each leaving and landing on the floor.
            pose.y -= self.hop * (std::f32::consts::TAU * t).sin().abs();
        }
        pose
    }

    /// Lays out `object` inside the box `[x0, x0 + w) x [y0, y0 + h)` so the whole path stays
    /// inside it (objects in different boxes never overlap). The motion fixes the path up to a
    /// little jitter from `rng`: a translation crosses nearly the whole box through its middle, a
    /// bounce hops in the middle. So a caption names one clip, nearly: what a model of a few
    /// hundred thousand parameters can learn on two CPU cores (with objects placed anywhere, the
    /// DiT shipped before session 14 never learnt to start one from noise).
    fn plan(object: &ObjectSpec, (x0, y0, w, h): (f32, f32, f32, f32), rng: &mut Rng) -> Self {
        let side = w.min(h);
        let radius = side * rng.range(0.18, 0.2);
        let (scale_lo, scale_hi) = (0.55, 1.3);
        let margin = 1.0;
        // The ranges the centre may take, along each axis.
        let (lo_x, hi_x) = (x0 + radius + margin, x0 + w - radius - margin);
        let (lo_y, hi_y) = (y0 + radius + margin, y0 + h - radius - margin);
        let middle = |rng: &mut Rng, lo: f32, hi: f32| (lo + hi) / 2.0 + rng.range(-1.0, 1.0) * JITTER * (hi - lo);
        let still = |x: f32, y: f32| Pose { x, y, radius };
        match object.motion {
            Motion::Growing | Motion::Shrinking => {
                let (x, y) = (x0 + w / 2.0, y0 + h / 2.0);
                let (small, large) = (Pose { x, y, radius: radius * scale_lo }, Pose { x, y, radius: (radius * scale_hi).min(side / 2.0 - margin) });
                let (start, end) = if object.motion == Motion::Growing { (small, large) } else { (large, small) };
                Self { start, end, hop: 0.0 }
            }
            Motion::Bouncing => {
                let x = middle(rng, lo_x, hi_x);
                let hop = (hi_y - lo_y) * rng.range(0.85, 1.0);
                Self { start: still(x, hi_y), end: still(x, hi_y), hop }
            }
            translation => {
                let (dx, dy) = translation.direction().unwrap_or_default();
                // Diagonals travel equally far on both axes, so their angle is exactly 45 degrees.
                let limit = if dx != 0.0 && dy != 0.0 { (hi_x - lo_x).min(hi_y - lo_y) } else { f32::INFINITY };
                let fraction = rng.range(0.9, 1.0);
                let mut span = |lo: f32, hi: f32, step: f32| {
                    if step == 0.0 {
                        let at = middle(rng, lo, hi);
                        return (at, at);
                    }
                    let length = limit.min(hi - lo) * fraction;
                    let from = (lo + hi - length) / 2.0;
                    if step > 0.0 { (from, from + length) } else { (from + length, from) }
                };
                let (xa, xb) = span(lo_x, hi_x, dx);
                let (ya, yb) = span(lo_y, hi_y, dy);
                Self { start: still(xa, ya), end: still(xb, yb), hop: 0.0 }
            }
        }
    }
}

fn covers(shape: Shape, pose: Pose, px: f32, py: f32) -> bool {
    let (dx, dy) = (px - pose.x, py - pose.y);
    let r = pose.radius;
    match shape {
        Shape::Circle => dx * dx + dy * dy <= r * r,
        Shape::Square => dx.abs() <= r && dy.abs() <= r,
        // Apex up at (x, y - r), base along y + r from x - r to x + r: half its bounding box.
        Shape::Triangle => (-r..=r).contains(&dy) && dx.abs() <= (dy + r) / 2.0,
    }
}

/// Renders `scene` from `seed` (which jitters sizes and paths). One object uses the whole
/// frame; two get the left and right halves.
pub fn render_clip(scene: &SceneSpec, settings: &ClipSettings, seed: u64) -> Result<Clip, SynthError> {
    let ClipSettings { frames, width, height, fps } = *settings;
    if width < MIN_SIDE || height < MIN_SIDE {
        return Err(SynthError::TooSmall { width, height });
    }
    if frames == 0 {
        return Err(SynthError::NoFrames);
    }
    let mut rng = Rng::new(seed);
    let region_width = width as f32 / scene.objects.len() as f32;
    let paths: Vec<(Shape, [u8; 3], Path)> = scene
        .objects
        .iter()
        .enumerate()
        .map(|(i, o)| (o.shape, o.colour.rgb(), Path::plan(o, (i as f32 * region_width, 0.0, region_width, height as f32), &mut rng)))
        .collect();
    let background = scene.background.rgb();
    let frames = (0..frames)
        .map(|f| {
            let t = if frames > 1 { f as f32 / (frames - 1) as f32 } else { 0.0 };
            let poses: Vec<(Shape, [u8; 3], Pose)> = paths.iter().map(|(shape, rgb, path)| (*shape, *rgb, path.at(t))).collect();
            let mut frame = Vec::with_capacity(width * height * 3);
            for y in 0..height {
                for x in 0..width {
                    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
                    let rgb = poses.iter().find(|(shape, _, pose)| covers(*shape, *pose, px, py)).map_or(background, |(_, rgb, _)| *rgb);
                    frame.extend_from_slice(&rgb);
                }
            }
            frame
        })
        .collect();
    Ok(Clip { width, height, fps, frames })
}

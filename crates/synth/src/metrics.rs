//! Scores: how well a detection matches a scene's attributes, and how a clip moves in time.

use crate::detect::Detection;
use crate::render::Clip;
use crate::scene::SceneSpec;
use serde::Serialize;

/// How many of a scene's objects a detection got right, attribute by attribute. An object's
/// shape and motion count only when an object of its colour was found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Adherence {
    pub objects: usize,
    pub colour_correct: usize,
    pub shape_correct: usize,
    pub motion_correct: usize,
    pub background_correct: bool,
    /// Detected objects of colours the scene does not have.
    pub extra_objects: usize,
}

impl Adherence {
    /// The clip follows its prompt: background, and every object's colour, shape and motion.
    pub fn all_correct(&self) -> bool {
        self.background_correct && [self.colour_correct, self.shape_correct, self.motion_correct].iter().all(|&n| n == self.objects)
    }
}

pub fn score(detection: &Detection, scene: &SceneSpec) -> Adherence {
    let mut adherence = Adherence { objects: scene.objects.len(), background_correct: detection.background == Some(scene.background), ..Default::default() };
    for expected in &scene.objects {
        if let Some(found) = detection.objects.iter().find(|o| o.colour == expected.colour) {
            adherence.colour_correct += 1;
            adherence.shape_correct += usize::from(found.shape == expected.shape);
            adherence.motion_correct += usize::from(found.motion == Some(expected.motion));
        }
    }
    adherence.extra_objects = detection.objects.iter().filter(|o| !scene.objects.iter().any(|e| e.colour == o.colour)).count();
    adherence
}

/// Where a clip's colour boundaries are, `[frames, height, width]`: the pixels with a pixel of
/// another colour among their 8 neighbours (a band two pixels wide along every boundary), where a
/// VAE's blur costs most (`vidfarm model eval` reports the PSNR there and elsewhere).
pub fn edge_pixels(clip: &Clip) -> Vec<bool> {
    let (width, height) = (clip.width, clip.height);
    let mut edges = Vec::with_capacity(clip.frames.len() * width * height);
    for frame in &clip.frames {
        let rgb = |y: usize, x: usize| &frame[(y * width + x) * 3..(y * width + x) * 3 + 3];
        for y in 0..height {
            for x in 0..width {
                let mut neighbours = (y.saturating_sub(1)..(y + 2).min(height)).flat_map(|yy| (x.saturating_sub(1)..(x + 2).min(width)).map(move |xx| (yy, xx)));
                edges.push(neighbours.any(|(yy, xx)| rgb(yy, xx) != rgb(y, x)));
            }
        }
    }
    edges
}

/// Mean absolute difference between two frames, per byte (0 to 255).
fn frame_difference(a: &[u8], b: &[u8]) -> f64 {
    let total: u64 = a.iter().zip(b).map(|(&x, &y)| u64::from(x.abs_diff(y))).sum();
    total as f64 / a.len().max(1) as f64
}

/// How a clip changes from frame to frame, taken in a frame at a time: a clip being encoded as
/// it is decoded is never whole, and its changes are still measured.
#[derive(Clone, Debug, Default)]
pub struct FrameChanges {
    last: Option<Vec<u8>>,
    /// Entry `i - 1`: the difference from frame `i - 1` to frame `i`.
    differences: Vec<f64>,
}

impl FrameChanges {
    pub fn of(clip: &Clip) -> Self {
        let differences = clip.frames.windows(2).map(|pair| frame_difference(&pair[0], &pair[1])).collect();
        Self { last: clip.frames.last().cloned(), differences }
    }

    /// Takes in the clip's next frame.
    pub fn push(&mut self, frame: &[u8]) {
        match &mut self.last {
            Some(last) => {
                self.differences.push(frame_difference(last, frame));
                last.clear();
                last.extend_from_slice(frame);
            }
            None => self.last = Some(frame.to_vec()),
        }
    }

    /// Temporal smoothness: the mean absolute difference of consecutive frames, per byte (0 to
    /// 255); `None` under two frames.
    pub fn mean(&self) -> Option<f64> {
        (!self.differences.is_empty()).then(|| self.differences.iter().sum::<f64>() / self.differences.len() as f64)
    }

    /// How visible chunk seams are: the mean frame difference across the seams divided by the
    /// mean across the other latent-frame boundaries, inside chunks (1.0: invisible). A seam at
    /// `f` is the change from frame `f - 1` to `f`. A causal VAE decodes latent frame `k` into
    /// video frames from `1 + temporal_factor (k - 1)` on, and the change into a latent frame's
    /// first video frame is larger than the changes within it, seam or not (9.8 against 6.3 in a
    /// 33 s clip of the shipped model); seams sit on those boundaries, so they are compared with
    /// their own kind. With `temporal_factor` 1 every frame change counts. `None` when either
    /// side has no frame pairs (or nothing changes inside chunks).
    pub fn seam_ratio(&self, seams: &[usize], temporal_factor: usize) -> Option<f64> {
        let (mut across, mut inside) = (Vec::new(), Vec::new());
        let period = temporal_factor.max(1);
        for (i, &difference) in (1..).zip(&self.differences) {
            if seams.contains(&i) {
                across.push(difference);
            } else if (i - 1) % period == 0 {
                inside.push(difference);
            }
        }
        let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
        let (across, inside) = (mean(&across)?, mean(&inside)?);
        (inside > 0.0).then(|| across / inside)
    }
}

/// [`FrameChanges::mean`] of a whole clip.
pub fn mean_abs_frame_difference(clip: &Clip) -> Option<f64> {
    FrameChanges::of(clip).mean()
}

/// [`FrameChanges::seam_ratio`] of a whole clip.
pub fn seam_ratio(clip: &Clip, seams: &[usize], temporal_factor: usize) -> Option<f64> {
    FrameChanges::of(clip).seam_ratio(seams, temporal_factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2x2 square in a 5x4 frame: the square and the pixels around it are edges; the column
    /// two pixels away is not, nor any pixel of a flat frame.
    #[test]
    fn edge_pixels_mark_both_sides_of_a_colour_boundary() {
        let (width, height) = (5, 4);
        let mut square = vec![255u8; width * height * 3];
        for (y, x) in [(1, 1), (1, 2), (2, 1), (2, 2)] {
            square[(y * width + x) * 3..(y * width + x) * 3 + 3].copy_from_slice(&[200, 0, 0]);
        }
        let flat = vec![255u8; width * height * 3];
        let clip = Clip::new(width, height, 8, vec![square, flat]).expect("clip");
        let row = [true, true, true, true, false];
        let expected: Vec<bool> = row.repeat(height).into_iter().chain(std::iter::repeat_n(false, width * height)).collect();
        assert_eq!(edge_pixels(&clip), expected);
    }
}

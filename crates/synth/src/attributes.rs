//! The vocabulary of the synthetic world: colours, shapes and motions, with their caption words.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
    Orange,
    Purple,
    White,
    Black,
}

impl Colour {
    pub const ALL: [Colour; 8] =
        [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow, Colour::Orange, Colour::Purple, Colour::White, Colour::Black];

    /// The colour's pixel value. Kept away from 0 and 255 so a model's output, clamped to
    /// [-1, 1], can reach it without saturating.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [225, 30, 30],
            Colour::Green => [30, 170, 50],
            Colour::Blue => [30, 60, 225],
            Colour::Yellow => [245, 220, 30],
            Colour::Orange => [245, 130, 20],
            Colour::Purple => [140, 40, 170],
            Colour::White => [240, 240, 240],
            Colour::Black => [15, 15, 15],
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
            Colour::Orange => "orange",
            Colour::Purple => "purple",
            Colour::White => "white",
            Colour::Black => "black",
        }
    }

    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.word() == word)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn word(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    pub fn from_word(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.word() == word)
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// How an object moves over the whole clip. Directions are as seen on screen (up is towards
/// the top row).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Motion {
    Left,
    Right,
    Up,
    Down,
    UpLeft,
    UpRight,
    DownLeft,
    DownRight,
    /// Hops up from a floor and falls back, twice over the clip.
    Bouncing,
    Growing,
    Shrinking,
}

impl Motion {
    pub const ALL: [Motion; 11] = [
        Motion::Left,
        Motion::Right,
        Motion::Up,
        Motion::Down,
        Motion::UpLeft,
        Motion::UpRight,
        Motion::DownLeft,
        Motion::DownRight,
        Motion::Bouncing,
        Motion::Growing,
        Motion::Shrinking,
    ];

    /// The caption's words for the motion; every word is in vidfarm-tiny's tokenizer.
    pub fn phrase(self) -> &'static str {
        match self {
            Motion::Left => "moving to the left",
            Motion::Right => "moving to the right",
            Motion::Up => "moving up",
            Motion::Down => "moving down",
            Motion::UpLeft => "moving up and to the left",
            Motion::UpRight => "moving up and to the right",
            Motion::DownLeft => "moving down and to the left",
            Motion::DownRight => "moving down and to the right",
            Motion::Bouncing => "bouncing",
            Motion::Growing => "growing",
            Motion::Shrinking => "shrinking",
        }
    }

    pub fn from_phrase(phrase: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.phrase() == phrase)
    }

    /// The unit screen direction of a translation (x right, y down); `None` for the others.
    pub fn direction(self) -> Option<(f32, f32)> {
        let d = std::f32::consts::FRAC_1_SQRT_2;
        match self {
            Motion::Left => Some((-1.0, 0.0)),
            Motion::Right => Some((1.0, 0.0)),
            Motion::Up => Some((0.0, -1.0)),
            Motion::Down => Some((0.0, 1.0)),
            Motion::UpLeft => Some((-d, -d)),
            Motion::UpRight => Some((d, -d)),
            Motion::DownLeft => Some((-d, d)),
            Motion::DownRight => Some((d, d)),
            Motion::Bouncing | Motion::Growing | Motion::Shrinking => None,
        }
    }

    /// The translation whose direction is nearest to `(dx, dy)` (screen axes), by angle.
    pub fn nearest_direction(dx: f32, dy: f32) -> Motion {
        Self::ALL
            .into_iter()
            .filter_map(|m| m.direction().map(|(ux, uy)| (m, ux * dx + uy * dy)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map_or(Motion::Right, |(m, _)| m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_colours_are_far_apart() {
        for a in Colour::ALL {
            for b in Colour::ALL {
                if a != b {
                    let [r1, g1, b1] = a.rgb().map(f32::from);
                    let [r2, g2, b2] = b.rgb().map(f32::from);
                    let distance = ((r1 - r2).powi(2) + (g1 - g2).powi(2) + (b1 - b2).powi(2)).sqrt();
                    assert!(distance > 80.0, "{a:?} and {b:?} are {distance} apart");
                }
            }
        }
    }

    #[test]
    fn words_round_trip() {
        for c in Colour::ALL {
            assert_eq!(Colour::from_word(c.word()), Some(c));
        }
        for s in Shape::ALL {
            assert_eq!(Shape::from_word(s.word()), Some(s));
        }
        for m in Motion::ALL {
            assert_eq!(Motion::from_phrase(m.phrase()), Some(m));
        }
    }

    #[test]
    fn each_translation_is_its_own_nearest_direction() {
        for m in Motion::ALL {
            if let Some((dx, dy)) = m.direction() {
                assert_eq!(Motion::nearest_direction(dx * 3.0, dy * 3.0), m);
            }
        }
    }
}

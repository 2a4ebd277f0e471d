//! What a clip shows, its caption, and the train / held-out split of attribute combinations.

use crate::attributes::{Colour, Motion, Shape};
use crate::rng::Rng;
use crate::SynthError;
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectSpec {
    pub shape: Shape,
    pub colour: Colour,
    pub motion: Motion,
}

/// One or two objects of different colours on a background of a third colour.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SceneSpec {
    pub objects: Vec<ObjectSpec>,
    pub background: Colour,
}

/// Which side of the split a scene falls on. Held out: a scene with any object whose colour and
/// shape are a held-out pair, so evaluation asks for combinations training never showed together
/// (every colour and every shape alone is still seen in training).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    HeldOut,
}

/// Whether training never shows this colour on this shape: one shape per colour, rotating, so
/// each shape is held out for two or three of the eight colours.
pub fn is_held_out_pair(colour: Colour, shape: Shape) -> bool {
    colour.index() % Shape::ALL.len() == shape.index()
}

fn article(colour: Colour) -> &'static str {
    if colour.word().starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" }
}

impl ObjectSpec {
    fn phrase(&self) -> String {
        format!("{} {} {} {}", article(self.colour), self.colour.word(), self.shape.word(), self.motion.phrase())
    }

    fn parse(phrase: &str) -> Option<Self> {
        let mut words = phrase.split(' ');
        let colour = Colour::from_word(words.next()?)?;
        let shape = Shape::from_word(words.next()?)?;
        let motion = Motion::from_phrase(&words.collect::<Vec<_>>().join(" "))?;
        Some(Self { shape, colour, motion })
    }
}

impl SceneSpec {
    /// Objects in one scene at most.
    pub const MAX_OBJECTS: usize = 2;

    /// Checks the scene's rules: one or two objects, all colours distinct.
    pub fn new(objects: Vec<ObjectSpec>, background: Colour) -> Result<Self, SynthError> {
        if !(1..=Self::MAX_OBJECTS).contains(&objects.len()) {
            return Err(SynthError::ObjectCount(objects.len()));
        }
        let mut colours: Vec<Colour> = objects.iter().map(|o| o.colour).collect();
        colours.push(background);
        colours.sort();
        colours.dedup();
        if colours.len() != objects.len() + 1 {
            return Err(SynthError::Scene("objects and background need different colours".into()));
        }
        Ok(Self { objects, background })
    }

    /// "a red circle moving to the right on a white background"; two objects are joined by
    /// "and": "a red circle moving up and a blue square growing on a white background".
    pub fn caption(&self) -> String {
        let objects: Vec<String> = self.objects.iter().map(ObjectSpec::phrase).collect();
        format!("{} on {} {} background", objects.join(" and "), article(self.background), self.background.word())
    }

    /// Reads a caption in the form `caption` writes (case and extra spaces ignored).
    pub fn parse(caption: &str) -> Result<Self, SynthError> {
        let fail = |reason: &str| SynthError::Caption { caption: caption.to_string(), reason: reason.to_string() };
        let normalised = caption.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ");
        let (objects, background) = normalised.rsplit_once(" on ").ok_or_else(|| fail("no \"on ... background\""))?;
        let background = background
            .strip_suffix(" background")
            .and_then(|b| b.split_once(' '))
            .and_then(|(_, word)| Colour::from_word(word))
            .ok_or_else(|| fail("the background is not \"a COLOUR background\""))?;
        let body = objects.strip_prefix("a ").or_else(|| objects.strip_prefix("an ")).ok_or_else(|| fail("no leading article"))?;
        // "and" also joins "up and to the left", but only an object phrase follows it with an article.
        let objects = body
            .split(" and a ")
            .flat_map(|part| part.split(" and an "))
            .map(|phrase| ObjectSpec::parse(phrase).ok_or_else(|| fail("an object is not \"a COLOUR SHAPE MOTION\"")))
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(objects, background)
    }

    pub fn split(&self) -> Split {
        if self.objects.iter().any(|o| is_held_out_pair(o.colour, o.shape)) { Split::HeldOut } else { Split::Train }
    }

    /// A scene drawn from `seed` on the given side of the split: one object or (one time in
    /// three) two, attributes uniform among those the split allows.
    pub fn sample(seed: u64, split: Split) -> Self {
        let mut rng = Rng::new(seed);
        let count = if rng.below(3) == 0 { Self::MAX_OBJECTS } else { 1 };
        loop {
            let mut colours = Colour::ALL.to_vec();
            let mut take_colour = |rng: &mut Rng| colours.swap_remove(rng.below(colours.len()));
            let mut objects = Vec::with_capacity(count);
            for _ in 0..count {
                let colour = take_colour(&mut rng);
                objects.push(ObjectSpec { shape: rng.pick(&Shape::ALL), colour, motion: rng.pick(&Motion::ALL) });
            }
            let background = take_colour(&mut rng);
            let scene = Self { objects, background };
            if scene.split() == split {
                return scene;
            }
        }
    }

    /// The first `count` distinct scenes sampled from seeds 0, 1, 2, ... on one side of the
    /// split: a fixed prompt set whose shorter versions are prefixes of the longer. Fewer when
    /// the split has fewer distinct scenes than seeds tried (a hundred per scene asked for).
    pub fn prompt_set(split: Split, count: usize) -> Vec<Self> {
        let mut scenes: Vec<Self> = Vec::new();
        for seed in 0..(count as u64).saturating_mul(100) {
            if scenes.len() == count {
                break;
            }
            let scene = Self::sample(seed, split);
            if !scenes.contains(&scene) {
                scenes.push(scene);
            }
        }
        scenes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_split() -> impl Strategy<Value = Split> {
        prop_oneof![Just(Split::Train), Just(Split::HeldOut)]
    }

    #[test]
    fn captions_read_as_the_issue_writes_them() {
        let scene = SceneSpec::new(vec![ObjectSpec { shape: Shape::Circle, colour: Colour::Red, motion: Motion::Right }], Colour::White).unwrap();
        assert_eq!(scene.caption(), "a red circle moving to the right on a white background");
        let two = SceneSpec::new(
            vec![
                ObjectSpec { shape: Shape::Triangle, colour: Colour::Orange, motion: Motion::UpLeft },
                ObjectSpec { shape: Shape::Square, colour: Colour::Yellow, motion: Motion::Up },
            ],
            Colour::Black,
        )
        .unwrap();
        assert_eq!(two.caption(), "an orange triangle moving up and to the left and a yellow square moving up on a black background");
    }

    #[test]
    fn every_held_out_pair_leaves_both_attributes_in_training() {
        for colour in Colour::ALL {
            assert_eq!(Shape::ALL.iter().filter(|&&s| is_held_out_pair(colour, s)).count(), 1);
        }
        for shape in Shape::ALL {
            let held = Colour::ALL.iter().filter(|&&c| is_held_out_pair(c, shape)).count();
            assert!((2..=3).contains(&held), "{shape:?} is held out for {held} colours");
        }
    }

    #[test]
    fn bad_scenes_and_captions_are_errors() {
        let red = ObjectSpec { shape: Shape::Circle, colour: Colour::Red, motion: Motion::Up };
        assert_eq!(SceneSpec::new(vec![], Colour::White), Err(SynthError::ObjectCount(0)));
        assert!(SceneSpec::new(vec![red], Colour::Red).is_err());
        assert!(SceneSpec::new(vec![red, red], Colour::White).is_err());
        for caption in ["", "a red circle", "a red blob moving up on a white background", "a red circle moving up on a red background"] {
            assert!(SceneSpec::parse(caption).is_err(), "{caption:?} parsed");
        }
    }

    #[test]
    fn prompt_sets_are_distinct_held_out_and_grow_by_prefix() {
        let long = SceneSpec::prompt_set(Split::HeldOut, 40);
        assert_eq!(long.len(), 40);
        assert!(long.iter().all(|s| s.split() == Split::HeldOut));
        assert_eq!(SceneSpec::prompt_set(Split::HeldOut, 10), long[..10]);
        let mut captions: Vec<String> = long.iter().map(SceneSpec::caption).collect();
        captions.sort();
        captions.dedup();
        assert_eq!(captions.len(), 40);
    }

    proptest! {
        #[test]
        fn sampled_scenes_are_valid_deterministic_and_on_their_side(seed in any::<u64>(), split in any_split()) {
            let scene = SceneSpec::sample(seed, split);
            prop_assert_eq!(scene.split(), split);
            prop_assert_eq!(&SceneSpec::new(scene.objects.clone(), scene.background).unwrap(), &scene);
            prop_assert_eq!(&SceneSpec::sample(seed, split), &scene);
        }

        #[test]
        fn captions_parse_back_to_their_scene(seed in any::<u64>(), split in any_split()) {
            let scene = SceneSpec::sample(seed, split);
            prop_assert_eq!(SceneSpec::parse(&scene.caption().to_uppercase()).unwrap(), scene);
        }
    }
}

//! What a fuzz target is, and the helpers that make one from a decoder in a line.

use std::fmt::Debug;

use serde::de::DeserializeOwned;
use serde::Serialize;
use shoal_protocol::codec;

use crate::gen;
use crate::rng::Rng;

/// What a decoder made of an input. Either is fine; a panic, a hang or an allocation out of
/// proportion is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The input decoded (and passed whatever checks come next).
    Accepted,
    /// The input was refused with an error.
    Rejected,
}

impl Verdict {
    /// `Accepted` for `Ok`, `Rejected` for `Err`.
    pub fn of<T, E>(result: &Result<T, E>) -> Self {
        if result.is_ok() {
            Self::Accepted
        } else {
            Self::Rejected
        }
    }
}

type RunFn = Box<dyn Fn(&[u8]) -> Verdict + Send + Sync>;
type GenerateFn = Box<dyn Fn(&mut Rng) -> Option<Vec<u8>> + Send + Sync>;
type SeedsFn = Box<dyn Fn() -> Vec<Vec<u8>> + Send + Sync>;

/// One decoder under test: its entry point, and where its inputs come from.
pub struct Target {
    /// Its name on the command line and in crash file names.
    pub name: &'static str,
    /// What it decodes, and from whom.
    pub about: &'static str,
    run: RunFn,
    generate: Option<GenerateFn>,
    seeds: Option<SeedsFn>,
}

impl Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// A target around any decoding function: `run` feeds it the bytes and says whether they
    /// were accepted. It must not panic, hang or allocate out of proportion with the input.
    pub fn new(
        name: &'static str,
        about: &'static str,
        run: impl Fn(&[u8]) -> Verdict + Send + Sync + 'static,
    ) -> Self {
        Self {
            name,
            about,
            run: Box::new(run),
            generate: None,
            seeds: None,
        }
    }

    /// A message type decoded with [`codec::decode`] under `limit`, as its receiver does.
    /// Inputs are generated from the type itself ([`gen::arbitrary`]), and every value that
    /// decodes must survive a re-encode unchanged.
    pub fn message<T>(name: &'static str, about: &'static str, limit: usize) -> Self
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
    {
        Self::message_checked::<T>(name, about, limit, |_| {})
    }

    /// As [`Target::message`], with `check` run on every decoded value: what the receiver
    /// does next with it (a validation that must not panic either).
    pub fn message_checked<T>(
        name: &'static str,
        about: &'static str,
        limit: usize,
        check: fn(&T),
    ) -> Self
    where
        T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
    {
        Self::new(name, about, move |bytes| {
            let decoded = codec::decode::<T>(bytes, limit);
            if let Ok(value) = &decoded {
                round_trip(value);
                check(value);
            }
            Verdict::of(&decoded)
        })
        .generator(|rng| codec::encode(&gen::arbitrary::<T>(rng)?).ok())
    }

    /// Sets how structure-aware inputs are made (valid encodings, built fresh).
    pub fn generator(
        mut self,
        generate: impl Fn(&mut Rng) -> Option<Vec<u8>> + Send + Sync + 'static,
    ) -> Self {
        self.generate = Some(Box::new(generate));
        self
    }

    /// Sets the hand-made seed inputs (valid encodings the mutators start from).
    pub fn seeds(mut self, seeds: impl Fn() -> Vec<Vec<u8>> + Send + Sync + 'static) -> Self {
        self.seeds = Some(Box::new(seeds));
        self
    }

    /// Sets the hand-made seeds as values, encoded with the codec.
    pub fn seed_values<T: Serialize + 'static>(self, values: fn() -> Vec<T>) -> Self {
        self.seeds(move || {
            values()
                .iter()
                .map(|v| codec::encode(v).expect("a seed value encodes"))
                .collect()
        })
    }

    /// Runs one input.
    pub fn run(&self, input: &[u8]) -> Verdict {
        (self.run)(input)
    }

    /// A fresh structure-aware input, if the target has a generator and it made one.
    pub fn generate(&self, rng: &mut Rng) -> Option<Vec<u8>> {
        self.generate.as_ref().and_then(|g| g(rng))
    }

    /// Whether it makes structure-aware inputs.
    pub fn has_generator(&self) -> bool {
        self.generate.is_some()
    }

    /// The hand-made seeds.
    pub fn hand_seeds(&self) -> Vec<Vec<u8>> {
        self.seeds.as_ref().map(|s| s()).unwrap_or_default()
    }

    /// The seed corpus: the hand-made seeds and `generated` structure-aware inputs made
    /// from a fixed seed (the same on every run). Every one must be accepted.
    pub fn corpus(&self, generated: usize) -> Vec<Vec<u8>> {
        let mut out = self.hand_seeds();
        let mut rng = Rng::from_bytes(self.name.as_bytes());
        let mut tries = 0;
        while out.len() < generated && tries < generated * 4 {
            tries += 1;
            if let Some(input) = self.generate(&mut rng) {
                if input.len() <= crate::mutate::MAX_INPUT {
                    out.push(input);
                }
            }
        }
        out
    }
}

/// Checks that `value` encodes, and decodes back to itself.
pub fn round_trip<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = match codec::encode(value) {
        Ok(b) => b,
        Err(e) => panic!("a decoded value does not encode: {e}: {value:?}"),
    };
    match codec::decode::<T>(&bytes, usize::MAX) {
        Ok(back) => assert!(back == *value, "re-decoded {back:?}, not {value:?}"),
        Err(e) => panic!("a re-encoded value does not decode: {e}: {value:?}"),
    }
}

//! Human-friendly units in configuration: memory sizes like `"4GB"` and durations like `"30s"`
//! (or plain numbers of seconds, as the prototype's config used).

use std::{fmt, str::FromStr, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A number of bytes, written in config as an integer or a string such as `"512MiB"` or `"4GB"`.
///
/// Units are binary (`KB` = `KiB` = 1024 bytes), matching how GPU and RAM sizes are quoted and how
/// the prototype read them; `B` or no unit means bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid memory size {0:?}: expected a number with an optional unit B, KB, MB, GB, TB (or KiB, MiB, GiB, TiB), e.g. \"4GB\""
)]
pub struct ByteSizeError(String);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let err = || ByteSizeError(raw.to_owned());
        let trimmed = raw.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let number: f64 = number.parse().map_err(|_| err())?;
        let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            _ => return Err(err()),
        };
        let bytes = number * multiplier as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(err());
        }
        Ok(ByteSize(bytes.round() as u64))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        for (unit, size) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count or a size such as \"4GB\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("memory size must not be negative"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Serde helpers for `Duration` fields: accept `"250ms"`, `"30s"`, `"1h 5m"` or a number of
/// seconds (`30`, `0.5`); write the humantime form.
pub mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(*value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\" or \"250ms\", or a number of seconds")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                Ok(Duration::from_secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                u64::try_from(v)
                    .map(Duration::from_secs)
                    .map_err(|_| E::custom("duration must not be negative"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Duration::try_from_secs_f64(v).map_err(|_| {
                    E::custom("duration must be a finite, non-negative number of seconds")
                })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                humantime::parse_duration(v.trim())
                    .map_err(|err| E::custom(format!("invalid duration {v:?}: {err}")))
            }
        }
        deserializer.deserialize_any(Visitor)
    }

    /// The same for `Option<Duration>`.
    pub mod option {
        use super::*;

        pub fn serialize<S: Serializer>(
            value: &Option<Duration>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(d) => super::serialize(d, serializer),
                None => serializer.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            #[derive(Deserialize)]
            struct Wrapper(#[serde(with = "super")] Duration);
            Option::<Wrapper>::deserialize(deserializer).map(|w| w.map(|Wrapper(d)| d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_strings_like_the_prototype() {
        assert_eq!("4GB".parse(), Ok(ByteSize(4 << 30)));
        assert_eq!("512 MiB".parse(), Ok(ByteSize(512 << 20)));
        assert_eq!("1.5G".parse(), Ok(ByteSize(3 << 29)));
        assert_eq!("1024".parse(), Ok(ByteSize(1024)));
        assert!("4 parsecs".parse::<ByteSize>().is_err());
        assert!("GB".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
    }

    #[test]
    fn displays_the_largest_exact_unit() {
        assert_eq!(ByteSize(4 << 30).to_string(), "4GiB");
        assert_eq!(ByteSize(1536).to_string(), "1536B");
        assert_eq!(ByteSize(0).to_string(), "0B");
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq)]
    struct Sample {
        size: ByteSize,
        #[serde(with = "duration")]
        wait: Duration,
        #[serde(with = "duration::option", default)]
        maybe: Option<Duration>,
    }

    #[test]
    fn deserialises_numbers_and_strings() {
        let yaml = "size: 2GB\nwait: 1.5\nmaybe: 250ms\n";
        let sample: Sample = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(sample.size, ByteSize(2 << 30));
        assert_eq!(sample.wait, Duration::from_millis(1500));
        assert_eq!(sample.maybe, Some(Duration::from_millis(250)));

        let sample: Sample = serde_yaml::from_str("size: 10\nwait: 30s\n").unwrap();
        assert_eq!(sample.wait, Duration::from_secs(30));
        assert_eq!(sample.maybe, None);
    }

    #[test]
    fn round_trips_through_serialisation() {
        let sample = Sample {
            size: ByteSize(3 << 20),
            wait: Duration::from_millis(1500),
            maybe: None,
        };
        let text = serde_yaml::to_string(&sample).unwrap();
        assert_eq!(serde_yaml::from_str::<Sample>(&text).unwrap(), sample);
    }

    #[test]
    fn rejects_negative_and_malformed_durations() {
        assert!(serde_yaml::from_str::<Sample>("size: 1\nwait: -1\n").is_err());
        assert!(serde_yaml::from_str::<Sample>("size: 1\nwait: soon\n").is_err());
    }
}

//! A/B traffic splits: a name (a model's or an alias) whose requests are shared between arms
//! (model versions, or other models) by weight. Assignment is sticky: a caller-supplied key
//! (`"user"`) is hashed with the split's name to a point in [0, 1), and the arms own consecutive
//! shares of that interval, so a user always lands in the same arm, and changing 50/50 to 60/40
//! moves only the users between 0.5 and 0.6. A request without a key lands at random.
use serde::{Deserialize, Serialize};

pub const MAX_ARMS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub model: String,
    /// A loaded version; absent: the model's default version at the time of each request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Relative share (0 keeps an arm listed without traffic).
    #[schema(maximum = 1_000_000)]
    #[serde(deserialize_with = "crate::model::integer")]
    pub weight: u32,
}

// Named `Split` in the OpenAPI document (the API's word); `AbSplit` here, beside the data split
// of `crate::data`. (A plain comment: a doc comment would become the schema's description.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Split)]
pub struct AbSplit {
    /// 1 to 16 arms, at least one with a positive weight. Arms naming the same version add up
    /// (a rule JSON Schema could not state, so the OpenAPI document and this check agree).
    #[schema(min_items = 1, max_items = 16)]
    pub arms: Vec<Arm>,
}

impl AbSplit {
    /// Shape only; whether the arms are loaded is the registry's check.
    pub fn check(&self) -> Result<(), String> {
        if self.arms.is_empty() || self.arms.len() > MAX_ARMS {
            return Err(format!(
                "a split needs 1 to {MAX_ARMS} arms, got {}",
                self.arms.len()
            ));
        }
        if self.arms.iter().any(|a| a.weight > 1_000_000) {
            return Err("arm weights must be at most 1000000".into());
        }
        if self.arms.iter().all(|a| a.weight == 0) {
            return Err("at least one arm needs a positive weight".into());
        }
        for (i, a) in self.arms.iter().enumerate() {
            crate::model::repository::check_name("arm model", &a.model)
                .map_err(|e| format!("arms[{i}]: {e}"))?;
            if let Some(v) = &a.version {
                crate::model::repository::check_name("arm version", v)
                    .map_err(|e| format!("arms[{i}]: {e}"))?;
            }
        }
        Ok(())
    }

    /// `model[:version]=weight,...` (the configuration file's form), e.g. `beauty-1l=50,beauty-2l=50`.
    pub fn parse(spec: &str) -> Result<AbSplit, String> {
        let mut arms = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (target, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("arm {part:?}: expected model[:version]=weight"))?;
            let (model, version) = crate::model::repository::parse_spec(target.trim())?;
            let weight = weight
                .trim()
                .parse::<u32>()
                .map_err(|_| format!("arm {part:?}: weight must be a whole number"))?;
            arms.push(Arm {
                model,
                version,
                weight,
            });
        }
        let s = AbSplit { arms };
        s.check()?;
        Ok(s)
    }

    /// The arm for `key` (sticky) or, without a key, a random one.
    pub fn pick(&self, split_name: &str, key: Option<&str>) -> &Arm {
        let point = match key {
            Some(k) => unit_interval(split_name, k),
            None => rand::random::<f64>(),
        };
        let total: f64 = self.arms.iter().map(|a| a.weight as f64).sum();
        let mut upto = 0.0;
        for a in &self.arms {
            upto += a.weight as f64 / total;
            if point < upto && a.weight > 0 {
                return a;
            }
        }
        // Rounding at the top end: the last arm with traffic.
        self.arms
            .iter()
            .rev()
            .find(|a| a.weight > 0)
            .expect("checked: one arm has weight")
    }
}

/// FNV-1a over `split \0 key`, then the splitmix64 finaliser (FNV alone clusters short keys):
/// stable across builds and platforms, unlike std's hasher.
fn unit_interval(split: &str, key: &str) -> f64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in split.bytes().chain([0u8]).chain(key.bytes()) {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(w: &[(&str, u32)]) -> AbSplit {
        AbSplit {
            arms: w
                .iter()
                .map(|(m, weight)| Arm {
                    model: m.to_string(),
                    version: None,
                    weight: *weight,
                })
                .collect(),
        }
    }

    #[test]
    fn assignment_is_sticky_balanced_and_moves_few_users_when_weights_change() {
        let s = split(&[("a", 50), ("b", 50)]);
        let users: Vec<String> = (0..20_000).map(|i| format!("user-{i}")).collect();
        let arm = |s: &AbSplit, u: &str| s.pick("beauty", Some(u)).model.clone();
        let first: Vec<String> = users.iter().map(|u| arm(&s, u)).collect();
        // Sticky: the same user, the same arm, every time.
        for (u, a) in users.iter().zip(&first) {
            assert_eq!(&arm(&s, u), a);
        }
        let share_a = first.iter().filter(|a| *a == "a").count() as f64 / users.len() as f64;
        assert!((share_a - 0.5).abs() < 0.02, "share of a {share_a}");
        // 50/50 -> 60/40: only users between 0.5 and 0.6 move (about 10%), all from b to a.
        let s2 = split(&[("a", 60), ("b", 40)]);
        let moved: Vec<(&String, String)> = first
            .iter()
            .zip(&users)
            .map(|(a, u)| (a, arm(&s2, u)))
            .filter(|(a, b)| *a != b)
            .collect();
        let frac = moved.len() as f64 / users.len() as f64;
        assert!((frac - 0.10).abs() < 0.02, "moved {frac}");
        assert!(moved.iter().all(|(a, b)| *a == "b" && b == "a"));
        // Another split name shuffles users independently.
        let other: usize = users
            .iter()
            .filter(|u| s.pick("other", Some(u)).model != arm(&s, u))
            .count();
        assert!(other > 8000 && other < 12000, "{other}");
    }

    #[test]
    fn zero_weight_arms_get_no_traffic_and_bad_splits_are_refused() {
        let s = split(&[("a", 0), ("b", 1)]);
        for i in 0..1000 {
            assert_eq!(s.pick("x", Some(&i.to_string())).model, "b");
            assert_eq!(s.pick("x", None).model, "b");
        }
        assert!(split(&[]).check().is_err());
        assert!(split(&[("a", 0)]).check().is_err());
        // An arm may repeat another: their shares add up.
        assert!(split(&[("a", 1), ("a", 2)]).check().is_ok());
        assert!(split(&[("../a", 1)]).check().is_err());
        assert!(split(&[("a", 1), ("b", 3)]).check().is_ok());
        let p = AbSplit::parse("a=1, b:2=3").unwrap();
        assert_eq!(p.arms[1].version.as_deref(), Some("2"));
        assert_eq!(p.arms[1].weight, 3);
        assert!(AbSplit::parse("a").is_err());
        assert!(AbSplit::parse("a=x").is_err());
    }

    #[test]
    fn assignment_is_deterministic_and_within_one_percent_of_the_weights_over_100k_users() {
        let s = split(&[("a", 20), ("b", 30), ("c", 50)]);
        let mut counts = std::collections::HashMap::new();
        for i in 0..100_000 {
            let u = format!("u{i}");
            let arm = s.pick("exp", Some(&u)).model.clone();
            assert_eq!(s.pick("exp", Some(&u)).model, arm, "user {u} moved");
            *counts.entry(arm).or_insert(0usize) += 1;
        }
        for (arm, want) in [("a", 0.2), ("b", 0.3), ("c", 0.5)] {
            let share = counts[arm] as f64 / 100_000.0;
            assert!((share - want).abs() < 0.01, "{arm}: {share} for {want}");
        }
    }
}

//! The registry of the built-in families: one serde-tagged configuration that builds any of
//! them, parsed from the command line as `rf`, `ve:sigma_max=20` or JSON.

use super::{PfgmPPConfig, ProbabilityFlow, RectifiedFlowConfig, VeConfig, VpConfig};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::sync::Arc;

/// The configuration of a built-in flow family, tagged by `kind`:
/// `{"kind": "ve", "sigma_max": 20}`. Missing fields take the family's defaults.
///
/// ```
/// use integration_flow::flow::{FlowConfig, VeConfig};
///
/// let ve: FlowConfig = "ve:sigma_max=20".parse()?;
/// assert_eq!(ve, FlowConfig::Ve(VeConfig { sigma_max: 20.0, ..Default::default() }));
/// assert_eq!(ve.init()?.name(), "ve");
/// let json: FlowConfig = r#"{"kind": "ve", "sigma_max": 20}"#.parse()?;
/// assert_eq!(json, ve);
/// assert!("ode".parse::<FlowConfig>().is_err());
/// # Ok::<(), integration_flow::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FlowConfig {
    /// Rectified flow ([`RectifiedFlow`](super::RectifiedFlow)).
    Rf(RectifiedFlowConfig),
    /// Variance-preserving diffusion ([`Vp`](super::Vp)).
    Vp(VpConfig),
    /// Variance-exploding diffusion ([`Ve`](super::Ve)).
    Ve(VeConfig),
    /// PFGM++ ([`PfgmPP`](super::PfgmPP)).
    Pfgmpp(PfgmPPConfig),
}

impl FlowConfig {
    /// The names [`FromStr`] accepts, in the order of the variants.
    pub const NAMES: [&'static str; 4] = ["rf", "vp", "ve", "pfgmpp"];

    /// Every family with its default configuration.
    pub fn defaults() -> [FlowConfig; 4] {
        [
            FlowConfig::Rf(RectifiedFlowConfig::default()),
            FlowConfig::Vp(VpConfig::default()),
            FlowConfig::Ve(VeConfig::default()),
            FlowConfig::Pfgmpp(PfgmPPConfig::default()),
        ]
    }

    /// The family's name (`rf`, `vp`, `ve`, `pfgmpp`), as the flow reports it.
    pub fn name(&self) -> &'static str {
        match self {
            FlowConfig::Rf(_) => "rf",
            FlowConfig::Vp(_) => "vp",
            FlowConfig::Ve(_) => "ve",
            FlowConfig::Pfgmpp(_) => "pfgmpp",
        }
    }

    /// Validates the configuration and builds the flow.
    pub fn init(&self) -> Result<Arc<dyn ProbabilityFlow>> {
        Ok(match self {
            FlowConfig::Rf(c) => Arc::new(c.init()?),
            FlowConfig::Vp(c) => Arc::new(c.init()?),
            FlowConfig::Ve(c) => Arc::new(c.init()?),
            FlowConfig::Pfgmpp(c) => Arc::new(c.init()?),
        })
    }

    /// Reads a configuration from JSON; an unknown family or field is an error naming it.
    pub fn from_json(json: &str) -> Result<Self> {
        <Self as crate::config::ValidatedConfig>::from_json(json)
    }

    /// What differs between this configuration (a checkpoint's) and `other` (a run's; `None`
    /// for a flow without one), as a sentence naming the field; `None` when they agree.
    pub fn difference(&self, other: Option<&FlowConfig>) -> Option<String> {
        let Some(other) = other else {
            return Some(format!(
                "flow differs: checkpoint has the built-in `{}`, this run a flow of its own",
                self.name()
            ));
        };
        if self.name() != other.name() {
            return Some(format!(
                "flow differs: checkpoint has {}, this run has {}",
                self.name(),
                other.name()
            ));
        }
        let (saved, given) = (fields(self), fields(other));
        let show =
            |v: Option<&serde_json::Value>| v.map_or("nothing".to_string(), |v| v.to_string());
        saved
            .keys()
            .chain(given.keys())
            .find(|field| saved.get(*field) != given.get(*field))
            .map(|field| {
                format!(
                    "flow field `{}.{field}` differs: checkpoint has {}, this run has {}",
                    self.name(),
                    show(saved.get(field)),
                    show(given.get(field))
                )
            })
    }
}

/// A configuration's fields and values.
fn fields(config: &FlowConfig) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(map)) => map,
        // A struct of numbers always serialises to an object.
        Ok(_) | Err(_) => serde_json::Map::new(),
    }
}

impl FromStr for FlowConfig {
    type Err = Error;

    /// `NAME` (defaults), `NAME:FIELD=VALUE,...` or a JSON object with `kind`.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.starts_with('{') {
            return Self::from_json(s);
        }
        let (name, overrides) = s.split_once(':').unwrap_or((s, ""));
        let name = name.trim();
        if !Self::NAMES.contains(&name) {
            return Err(Error::InvalidArgument {
                name: "flow",
                reason: format!(
                    "unknown flow {name:?}: use one of {}",
                    Self::NAMES.join(", ")
                ),
            });
        }
        let mut object = serde_json::Map::new();
        object.insert("kind".into(), name.into());
        for pair in overrides.split(',').filter(|p| !p.trim().is_empty()) {
            let (field, value) = pair.split_once('=').ok_or_else(|| Error::InvalidArgument {
                name: "flow",
                reason: format!("{pair:?} is not FIELD=VALUE"),
            })?;
            let field = field.trim();
            if field == "kind" || object.contains_key(field) {
                return Err(Error::InvalidArgument {
                    name: "flow",
                    reason: format!("{field:?} is given twice (the family is the name before `:`)"),
                });
            }
            let value: serde_json::Value =
                serde_json::from_str(value.trim()).map_err(|_| Error::InvalidArgument {
                    name: "flow",
                    reason: format!("the value of {field:?} is not a number: {value:?}"),
                })?;
            object.insert(field.to_string(), value);
        }
        Self::from_json(&serde_json::Value::Object(object).to_string())
    }
}

impl std::fmt::Display for FlowConfig {
    /// The `NAME:FIELD=VALUE,...` form that [`FromStr`] reads back.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        let mut separator = ':';
        for (field, value) in fields(self) {
            if field != "kind" {
                write!(f, "{separator}{field}={value}")?;
                separator = ',';
            }
        }
        Ok(())
    }
}

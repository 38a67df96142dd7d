//! The one list of channels. Each entry says what enables a channel and
//! builds its adapter; everything else that differs per channel is behind
//! the [`ChannelAdapter`] trait. The daemon, `doctor`, `tunnel`, `replay`
//! and the TUI read this list and nothing channel-specific, so adding a
//! channel is its adapter file, its line in [`ALL`] and its name in
//! [`Channel`].

use std::sync::Arc;

use super::{slack, sms, telegram, whatsapp};
use crate::config::Config;
use crate::core::Channel;
use crate::core::channel::ChannelAdapter;

/// What the tools need to know of a channel before it is enabled.
pub struct ChannelSpec {
    pub channel: Channel,
    /// The variables that enable it when all are set.
    pub secrets: &'static [&'static str],
    /// Whether the configuration sets each of `secrets`, in order.
    pub present: fn(&Config) -> Vec<bool>,
    /// The adapter, when every secret is set.
    pub build: fn(&Config) -> Option<Arc<dyn ChannelAdapter>>,
}

impl ChannelSpec {
    /// "A and B": what to set to enable the channel.
    pub fn secrets_hint(&self) -> String {
        self.secrets.join(" and ")
    }
}

/// Every channel a webhook can come from.
pub const ALL: &[ChannelSpec] = &[whatsapp::SPEC, sms::SPEC, telegram::SPEC, slack::SPEC];

/// The entry for `channel` (`None` for `cli`, which has no webhook).
pub fn spec(channel: Channel) -> Option<&'static ChannelSpec> {
    ALL.iter().find(|s| s.channel == channel)
}

/// The channels whose secrets are configured, as adapters.
pub fn enabled(config: &Config) -> Vec<Arc<dyn ChannelAdapter>> {
    ALL.iter().filter_map(|s| (s.build)(config)).collect()
}

/// The adapter of `channel`, if it is enabled.
pub fn adapter(config: &Config, channel: Channel) -> Option<Arc<dyn ChannelAdapter>> {
    spec(channel).and_then(|s| (s.build)(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_webhook_channel_has_one_entry_and_needs_its_secrets() {
        for channel in Channel::ALL {
            let found = ALL.iter().filter(|s| s.channel == channel).count();
            assert_eq!(found, usize::from(channel != Channel::Cli), "{channel}");
        }
        let empty = Config::default();
        assert!(enabled(&empty).is_empty());
        for s in ALL {
            assert!((s.present)(&empty).iter().all(|p| !p), "{}", s.channel);
            assert_eq!((s.present)(&empty).len(), s.secrets.len());
        }
    }
}

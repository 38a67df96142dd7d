//! WhatsApp through Twilio: numbers are `whatsapp:+E164`, replies go from
//! `TWILIO_WHATSAPP_FROM` or the number written to, and Twilio's typing
//! indicator shows while a turn runs. The wire format is Twilio's
//! ([`super::twilio`]).

use std::sync::Arc;

use super::registry::ChannelSpec;
use super::twilio::{Flavor, Twilio};
use crate::config::Config;
use crate::core::Channel;

pub const FLAVOR: Flavor = Flavor {
    channel: Channel::Whatsapp,
    address_prefix: "whatsapp:",
    from_variable: "TWILIO_WHATSAPP_FROM",
    typing: true,
    owns_number_url: true,
    console_hint: "set \"When a message comes in\"",
};

pub const SPEC: ChannelSpec = ChannelSpec {
    channel: Channel::Whatsapp,
    secrets: super::twilio::SECRETS,
    present: super::twilio::present,
    build: |config: &Config| {
        let from = config.channels.twilio.whatsapp_from.clone();
        Twilio::from_config(config, FLAVOR, from).map(|t| Arc::new(t) as _)
    },
};

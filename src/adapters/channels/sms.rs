//! SMS through Twilio: the WhatsApp scheme without the `whatsapp:` prefix,
//! at `POST /webhook/sms`. Replies go from `TWILIO_SMS_FROM` or the number
//! written to; SMS has no typing signal.

use std::sync::Arc;

use super::registry::ChannelSpec;
use super::twilio::{Flavor, Twilio};
use crate::config::Config;
use crate::core::Channel;

pub const FLAVOR: Flavor = Flavor {
    channel: Channel::Sms,
    address_prefix: "",
    from_variable: "TWILIO_SMS_FROM",
    typing: false,
    // The number's `SmsUrl` is WhatsApp's to set; SMS is pasted by hand.
    owns_number_url: false,
    console_hint: "on the phone number, set \"A message comes in\"",
};

pub const SPEC: ChannelSpec = ChannelSpec {
    channel: Channel::Sms,
    secrets: super::twilio::SECRETS,
    present: super::twilio::present,
    build: |config: &Config| {
        let from = config.channels.twilio.sms_from.clone();
        Twilio::from_config(config, FLAVOR, from).map(|t| Arc::new(t) as _)
    },
};

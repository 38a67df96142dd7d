//! `convagent people`: who is who across channels. A person owns one or
//! more sender identities (`telegram:42`, `whatsapp:+15551234567`); each
//! sender is a person of its own from first contact until an operator links
//! them here, or the person does with `/link` in the chats.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use convagent::core::people::Person;
use convagent::core::ports::{AnyStore, SenderRef, StoreError, Write, Written};

use crate::context::{Context, UserError};
use crate::output::{now_ms, utc};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// People, the newest first, with their identities
    List {
        /// JSON lines instead of a table
        #[arg(long)]
        json: bool,
        /// At most this many
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One person: their identities and conversations
    Show {
        /// A person's number, or one of their identities (CHANNEL:ID)
        who: Who,
        #[arg(long)]
        json: bool,
    },
    /// Make two identities (or people) one person
    Link {
        /// CHANNEL:ID or a person's number: the person kept
        a: Who,
        /// CHANNEL:ID or a person's number: joined into the first
        b: Who,
    },
    /// Make an identity a person of its own again
    Unlink {
        /// CHANNEL:ID
        identity: SenderRef,
    },
}

/// A person named by their number or by one of their identities.
#[derive(Debug, Clone)]
pub enum Who {
    Person(i64),
    Identity(SenderRef),
}

impl std::str::FromStr for Who {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim_start_matches('#').parse::<i64>() {
            Ok(id) if id > 0 => Ok(Who::Person(id)),
            _ => s.parse().map(Who::Identity),
        }
    }
}

/// The person `who` names; an unknown one is an error with a hint.
pub fn find(store: &dyn AnyStore, who: &Who) -> Result<Person> {
    let found = match who {
        Who::Person(id) => store.person(*id)?,
        Who::Identity(sender) => store.person_of(sender)?,
    };
    found.ok_or_else(|| {
        let named = match who {
            Who::Person(id) => format!("person {id}"),
            Who::Identity(s) => format!("{}:{}", s.channel, s.id),
        };
        UserError::new(
            format!("nobody known as {named}"),
            "`convagent people list` shows people and their identities",
        )
        .into()
    })
}

pub fn run(ctx: &Context, args: Args) -> Result<ExitCode> {
    match args.action {
        Action::List { json, limit } => {
            let Some(store) = ctx.store_read_only()? else {
                eprintln!("nobody yet: people appear on their first message");
                return Ok(ExitCode::SUCCESS);
            };
            let people = store.people(limit)?;
            if json {
                for p in &people {
                    outln!("{}", serde_json::to_string(p)?);
                }
            } else if people.is_empty() {
                eprintln!("nobody yet: people appear on their first message");
            } else {
                outln!("{:>6}  {:<20} IDENTITIES", "PERSON", "SINCE");
                for p in &people {
                    outln!("{:>6}  {:<20} {}", p.id, utc(p.created_at), p.describe());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Show { who, json } => {
            let store = ctx.store()?;
            let person = find(&*store, &who)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&person)?);
                return Ok(ExitCode::SUCCESS);
            }
            outln!("person {} (since {})", person.id, utc(person.created_at));
            for i in &person.identities {
                let data = store.sender_data(&i.sender_ref())?;
                outln!(
                    "  {}:{}  since {}  {} conversations, {} messages",
                    i.channel,
                    i.sender,
                    utc(i.since),
                    data.conversations.len(),
                    data.messages.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Action::Link { a, b } => {
            let store = ctx.store()?;
            let (pa, pb) = (find(&*store, &a)?, find(&*store, &b)?);
            if pa.id == pb.id {
                outln!("Already one person: {} ({}).", pa.id, pa.describe());
                return Ok(ExitCode::SUCCESS);
            }
            let person = store
                .write_now(Write::Link {
                    a: pa.identities[0].sender_ref(),
                    b: pb.identities[0].sender_ref(),
                    at: now_ms(),
                })
                .and_then(Written::person)?;
            outln!("Person {}: {}.", person.id, person.describe());
            Ok(ExitCode::SUCCESS)
        }
        Action::Unlink { identity } => {
            let store = ctx.store()?;
            match store.write_now(Write::Unlink {
                sender: identity.clone(),
                at: now_ms(),
            }) {
                Ok(w) => {
                    let person = w.person()?;
                    outln!(
                        "{}:{} is person {} now, on its own.",
                        identity.channel,
                        identity.id,
                        person.id
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(StoreError::NotFound(what)) => Err(UserError::new(
                    format!("nobody known as {what}"),
                    "`convagent people list` shows people and their identities",
                )
                .into()),
                Err(e) => Err(e.into()),
            }
        }
    }
}

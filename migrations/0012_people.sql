-- People (issue 26): a person owns one or more sender identities (a
-- channel and a sender id). One is made on a sender's first contact; an
-- operator or the person (`/link` and its code) joins identities.
CREATE TABLE people (
    id         INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL
);
CREATE TABLE identities (
    channel   TEXT    NOT NULL,
    sender    TEXT    NOT NULL,
    person_id INTEGER NOT NULL REFERENCES people (id),
    -- Since when it belongs to this person.
    since     INTEGER NOT NULL,
    PRIMARY KEY (channel, sender)
) WITHOUT ROWID;
CREATE INDEX identities_by_person ON identities (person_id);
-- The senders already known: a person each, numbered by first contact.
INSERT INTO people (id, created_at)
    SELECT row_number() OVER (ORDER BY min(started_at), channel, sender), min(started_at)
    FROM conversations GROUP BY channel, sender;
INSERT INTO identities (channel, sender, person_id, since)
    SELECT channel, sender,
           row_number() OVER (ORDER BY min(started_at), channel, sender), min(started_at)
    FROM conversations GROUP BY channel, sender;
-- A sender's first conversation makes their person.
CREATE TRIGGER identities_first_contact AFTER INSERT ON conversations
WHEN NOT EXISTS (SELECT 1 FROM identities WHERE channel = NEW.channel AND sender = NEW.sender)
BEGIN
    INSERT INTO people (created_at) VALUES (NEW.started_at);
    INSERT INTO identities (channel, sender, person_id, since)
        VALUES (NEW.channel, NEW.sender, last_insert_rowid(), NEW.started_at);
END;
-- `/link` codes: single-use, short-lived; each ask and each failed try is
-- counted per identity (rate limits).
CREATE TABLE link_codes (
    code       TEXT    PRIMARY KEY,
    channel    TEXT    NOT NULL,
    sender     TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
);
CREATE INDEX link_codes_by_sender ON link_codes (channel, sender, created_at);
CREATE TABLE link_failures (
    channel TEXT    NOT NULL,
    sender  TEXT    NOT NULL,
    at      INTEGER NOT NULL
);
CREATE INDEX link_failures_by_sender ON link_failures (channel, sender, at);

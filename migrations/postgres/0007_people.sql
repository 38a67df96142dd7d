-- People (issue 26), as migrations/0012_people.sql on SQLite.
CREATE TABLE people (
    id         BIGSERIAL PRIMARY KEY,
    created_at BIGINT NOT NULL
);
CREATE TABLE identities (
    channel   TEXT   NOT NULL,
    sender    TEXT   NOT NULL,
    person_id BIGINT NOT NULL REFERENCES people (id),
    since     BIGINT NOT NULL,
    PRIMARY KEY (channel, sender)
);
CREATE INDEX identities_by_person ON identities (person_id);
INSERT INTO people (id, created_at)
    SELECT row_number() OVER (ORDER BY min(started_at), channel, sender), min(started_at)
    FROM conversations GROUP BY channel, sender;
INSERT INTO identities (channel, sender, person_id, since)
    SELECT channel, sender,
           row_number() OVER (ORDER BY min(started_at), channel, sender), min(started_at)
    FROM conversations GROUP BY channel, sender;
SELECT setval(pg_get_serial_sequence('people', 'id'), coalesce(max(id), 0) + 1, false) FROM people;
-- A sender's first conversation makes their person. Two daemons making a
-- sender's first two conversations at once make one identity; the other
-- person row is taken back.
CREATE FUNCTION identities_first_contact() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    made BIGINT;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM identities WHERE channel = NEW.channel AND sender = NEW.sender) THEN
        INSERT INTO people (created_at) VALUES (NEW.started_at) RETURNING id INTO made;
        INSERT INTO identities (channel, sender, person_id, since)
            VALUES (NEW.channel, NEW.sender, made, NEW.started_at)
            ON CONFLICT DO NOTHING;
        IF NOT FOUND THEN
            DELETE FROM people WHERE id = made;
        END IF;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER identities_first_contact AFTER INSERT ON conversations
    FOR EACH ROW EXECUTE FUNCTION identities_first_contact();
CREATE TABLE link_codes (
    code       TEXT   PRIMARY KEY,
    channel    TEXT   NOT NULL,
    sender     TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);
CREATE INDEX link_codes_by_sender ON link_codes (channel, sender, created_at);
CREATE TABLE link_failures (
    channel TEXT   NOT NULL,
    sender  TEXT   NOT NULL,
    at      BIGINT NOT NULL
);
CREATE INDEX link_failures_by_sender ON link_failures (channel, sender, at);

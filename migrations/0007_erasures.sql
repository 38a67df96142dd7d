-- Issue 12: `convagent history delete --sender` erases everything held about
-- a person, and leaves this record that it happened: when, on which channel,
-- and how many rows of each kind. Never who, never what.
CREATE TABLE erasures (
    id     INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    channel TEXT   NOT NULL,
    -- {"conversations": n, "messages": n, ...}
    counts TEXT    NOT NULL
);

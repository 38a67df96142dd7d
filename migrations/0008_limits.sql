-- Issue 12: limits checked before the LLM is called (src/core/limits.rs).
-- Append-only.

-- A sender's conversations on a channel, closed ones included: limits count
-- per sender on every turn, and `history export/delete --sender` find them.
CREATE INDEX conversations_by_sender ON conversations (channel, sender);

-- Tokens (prompt + completion) the replies of each conversation used per UTC
-- day (unix ms / 86400000), kept by the trigger below in the transaction
-- that stores the reply: the daily caps add up a few rows, not a day of
-- messages. Deleted with their conversation.
CREATE TABLE token_usage (
    day             INTEGER NOT NULL,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id),
    tokens          INTEGER NOT NULL,
    PRIMARY KEY (day, conversation_id)
) WITHOUT ROWID;
CREATE INDEX token_usage_by_conversation ON token_usage (conversation_id);

CREATE TRIGGER token_usage_count AFTER INSERT ON messages
WHEN new.role = 'assistant'
     AND coalesce(new.prompt_tokens, 0) + coalesce(new.completion_tokens, 0) > 0
BEGIN
    INSERT INTO token_usage (day, conversation_id, tokens)
    VALUES (new.created_at / 86400000, new.conversation_id,
            coalesce(new.prompt_tokens, 0) + coalesce(new.completion_tokens, 0))
    ON CONFLICT (day, conversation_id) DO UPDATE SET tokens = tokens + excluded.tokens;
END;

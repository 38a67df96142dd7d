-- convagent schema, version 3: grouped turns, sender names, prompt
-- sources. Append-only.

-- A burst of messages answered in one turn: the reply's `reply_to` is the
-- last of them, and every other message it covers points at the reply here.
ALTER TABLE messages ADD COLUMN answered_by INTEGER REFERENCES messages (id);
CREATE INDEX messages_answered_by ON messages (answered_by) WHERE answered_by IS NOT NULL;

-- The name the provider shows for the sender (Telegram first name, Twilio
-- ProfileName, Slack display name), kept current by each message.
ALTER TABLE conversations ADD COLUMN display_name TEXT;

-- Where a system prompt version came from: `config` (agent.system_prompt,
-- synced at start), `chat` (`/prompt set`), or `default`.
ALTER TABLE system_prompts ADD COLUMN source TEXT NOT NULL DEFAULT 'default';

-- "When did this provider last answer, how fast": monitors ask per provider.
CREATE INDEX messages_answers_by_provider
    ON messages (provider, created_at) WHERE kind = 'answer';

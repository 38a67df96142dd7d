-- Storing an inbound message in one round trip (the daemon's hottest
-- write): find it stored before, or open/extend its conversation (locking
-- the conversation's row first, so one conversation's message ids become
-- visible in increasing order) and insert it. A redelivery racing this
-- insert at another daemon waits for that commit and finds it; the count
-- this call added is taken back.
CREATE FUNCTION convagent_accept(
    p_channel TEXT, p_sender TEXT, p_thread TEXT, p_at BIGINT, p_display_name TEXT,
    p_text TEXT, p_provider_message_id TEXT, p_provider_ts BIGINT, p_correlation_id TEXT,
    p_attachments TEXT, p_metadata TEXT,
    OUT message_id BIGINT, OUT conversation_id BIGINT, OUT duplicate BOOLEAN)
LANGUAGE plpgsql AS $$
BEGIN
    SELECT m.id, m.conversation_id INTO message_id, conversation_id FROM messages m
    WHERE m.channel = p_channel AND m.provider_message_id = p_provider_message_id;
    IF FOUND THEN
        duplicate := true;
        RETURN;
    END IF;
    INSERT INTO conversations AS c (channel, sender, thread, started_at, last_activity_at,
                                    message_count, display_name)
    VALUES (p_channel, p_sender, p_thread, p_at, p_at, 1, p_display_name)
    ON CONFLICT (channel, sender, thread) WHERE closed_at IS NULL
    DO UPDATE SET last_activity_at = greatest(c.last_activity_at, EXCLUDED.last_activity_at),
                  message_count = c.message_count + 1,
                  display_name = coalesce(EXCLUDED.display_name, c.display_name)
    RETURNING c.id INTO conversation_id;
    INSERT INTO messages (conversation_id, role, channel, text, created_at, provider_message_id,
                          provider_ts, correlation_id, attachments, metadata)
    VALUES (conversation_id, 'user', p_channel, p_text, p_at, p_provider_message_id,
            p_provider_ts, p_correlation_id, p_attachments, p_metadata)
    ON CONFLICT (channel, provider_message_id) WHERE provider_message_id IS NOT NULL DO NOTHING
    RETURNING id INTO message_id;
    IF message_id IS NOT NULL THEN
        duplicate := false;
        RETURN;
    END IF;
    -- Another daemon stored it first.
    UPDATE conversations c SET message_count = c.message_count - 1
    WHERE c.id = conversation_id;
    SELECT m.id, m.conversation_id INTO message_id, conversation_id FROM messages m
    WHERE m.channel = p_channel AND m.provider_message_id = p_provider_message_id;
    duplicate := true;
END $$;

-- Storing a turn's outcome in one round trip: violations, the reply (one
-- answer per message, whichever daemon records it first: the others get
-- that one back), the burst it covers, and by trigger its outbox row and
-- token count. The conversation's row is locked before the reply takes
-- its id.
CREATE FUNCTION convagent_turn(
    p_message_id BIGINT, p_covers BIGINT[], p_violating BIGINT[], p_rules TEXT[],
    p_kind TEXT, p_text TEXT, p_provider TEXT, p_model TEXT, p_prompt_version BIGINT,
    p_prompt_tokens BIGINT, p_completion_tokens BIGINT, p_latency_ms BIGINT, p_at BIGINT)
RETURNS messages
LANGUAGE plpgsql AS $$
DECLARE
    v_conversation BIGINT;
    v_channel TEXT;
    v_correlation TEXT;
    v_reply messages;
BEGIN
    SELECT m.conversation_id, m.channel, m.correlation_id
    INTO v_conversation, v_channel, v_correlation
    FROM messages m WHERE m.id = p_message_id AND m.role = 'user';
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user message % not found', p_message_id USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM 1 FROM conversations c WHERE c.id = v_conversation FOR UPDATE;
    INSERT INTO guardrail_violations (message_id, rule, created_at)
    SELECT v.id, v.rule, p_at FROM unnest(p_violating, p_rules) AS v(id, rule);
    INSERT INTO messages (conversation_id, role, channel, text, created_at, correlation_id,
                          reply_to, kind, provider, model, prompt_version, prompt_tokens,
                          completion_tokens, latency_ms)
    VALUES (v_conversation, 'assistant', v_channel, p_text, p_at, v_correlation, p_message_id,
            p_kind, p_provider, p_model, p_prompt_version, p_prompt_tokens, p_completion_tokens,
            p_latency_ms)
    ON CONFLICT (reply_to) WHERE reply_to IS NOT NULL AND kind <> 'fallback' DO NOTHING
    RETURNING * INTO v_reply;
    IF v_reply.id IS NULL THEN
        SELECT * INTO v_reply FROM messages m
        WHERE m.reply_to = p_message_id AND m.kind <> 'fallback';
        RETURN v_reply;
    END IF;
    UPDATE conversations c SET message_count = c.message_count + 1,
                               last_activity_at = greatest(c.last_activity_at, p_at)
    WHERE c.id = v_conversation;
    IF p_kind <> 'fallback' THEN
        -- Only unanswered user messages of the same conversation: a stray
        -- id cannot mark anything else.
        UPDATE messages m SET answered_at = p_at WHERE m.id = p_message_id;
        UPDATE messages m SET answered_at = p_at, answered_by = v_reply.id
        WHERE m.id = ANY(p_covers) AND m.id <> p_message_id AND m.conversation_id = v_conversation
          AND m.role = 'user' AND m.answered_at IS NULL;
    END IF;
    RETURN v_reply;
END $$;

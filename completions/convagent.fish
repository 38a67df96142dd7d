# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_convagent_global_optspecs
    string join \n config= env-file= v/verbose h/help V/version
end

function __fish_convagent_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_convagent_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_convagent_using_subcommand
    set -l cmd (__fish_convagent_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c convagent -n "__fish_convagent_needs_command" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_needs_command" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_needs_command" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_needs_command" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_needs_command" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "serve" -d 'Run the daemon: channel webhooks, workers, outbox, health, metrics'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "chat" -d 'Talk to the agent in the terminal (channel `cli`)'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "history" -d 'List, show and search stored conversations'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "outbox" -d 'Replies still to be sent and dead letters: list, retry, discard'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "takeover" -d 'Take a conversation over: the agent is silent there until released'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "reply" -d 'Answer a conversation as an operator (takes it over)'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "release" -d 'Give a conversation back to the agent'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "approvals" -d 'Tool calls waiting for an operator\'s yes or no: list, approve, deny'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "people" -d 'Who is who across channels: list, show, link and unlink identities'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "knowledge" -d 'The documents the agent answers from: add, list, remove, reindex'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "doctor" -d 'Check config, store and LLM providers, with a fix for each problem'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "replay" -d 'Sign golden webhook payloads and post them to a daemon (or load-test it)'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "tunnel" -d 'Expose the daemon through cloudflared and register the webhooks'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "tui" -d 'Watch conversations, traces, breakers and the log live; take conversations over, reply, answer approvals'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "service" -d 'Run `serve` as a systemd service: install or remove its unit'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "store" -d 'Move the store: copy a SQLite store into Postgres'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "mcp" -d 'Serve convagent\'s tools to other agents over MCP (stdio), and the tokens of `/mcp` on `serve`'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "completions" -d 'Print shell completion scripts, or write them and the man page'
complete -c convagent -n "__fish_convagent_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand serve" -l listen -d 'Address to listen on (default: CONVAGENT_LISTEN or 127.0.0.1:8080)' -r
complete -c convagent -n "__fish_convagent_using_subcommand serve" -l public-url -d 'The public base URL providers call, e.g. https://x.trycloudflare.com' -r
complete -c convagent -n "__fish_convagent_using_subcommand serve" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand serve" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand serve" -l dry-run -d 'Record replies instead of sending them'
complete -c convagent -n "__fish_convagent_using_subcommand serve" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand serve" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand serve" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand chat" -l chain -d 'LLM providers to try, in order, for this session (e.g. `embedded`)' -r
complete -c convagent -n "__fish_convagent_using_subcommand chat" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand chat" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand chat" -l new -d 'Start a new conversation instead of continuing the last one'
complete -c convagent -n "__fish_convagent_using_subcommand chat" -l json -d 'Print one JSON object per reply (for scripts)'
complete -c convagent -n "__fish_convagent_using_subcommand chat" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand chat" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand chat" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -l channel -d 'Only this channel (whatsapp, sms, telegram, slack, cli)' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -f -a "list" -d 'List conversations, most recent first (the default)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -f -a "show" -d 'Show one conversation\'s messages'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -f -a "search" -d 'Full-text search over all messages, newest first'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -f -a "export" -d 'Everything held about one person (conversations, messages, summaries, traces, outbox items, violations) as JSON'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -f -a "prune" -d 'Delete what is older than the configured retention (`retention.messages`: conversations idle that long, never one still waiting for an answer; `retention.traces`), and say what went'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -f -a "delete" -d 'Delete everything held about one person, in one transaction; only a record that a deletion happened (when, how many rows) is kept'
complete -c convagent -n "__fish_convagent_using_subcommand history; and not __fish_seen_subcommand_from list show search export prune delete help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -l sender -d 'Only this sender' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -l channel -d 'Only this channel (whatsapp, sms, telegram, slack, cli)' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from show" -l channel -d 'Only this channel (whatsapp, sms, telegram, slack, cli)' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from show" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from show" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from show" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from show" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from show" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -l channel -d 'Only this channel (whatsapp, sms, telegram, slack, cli)' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -l rank -d 'Best matches first instead of newest (ranks every match: slower on a big store)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from search" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l sender -d 'CHANNEL:ID, e.g. telegram:12345 or whatsapp:+15551234567' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l person -d 'Every identity of a person: their number, or one of their identities (CHANNEL:ID), as `convagent people` shows them' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l out -d 'Write to this file instead of standard output' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l channel -d 'Only this channel (whatsapp, sms, telegram, slack, cli)' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l jsonl -d 'One JSON object per line, each with its `kind`'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from export" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -l channel -d 'Only this channel (whatsapp, sms, telegram, slack, cli)' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -l dry-run -d 'Only say what would go'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from prune" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -l sender -d 'CHANNEL:ID, e.g. telegram:12345 or whatsapp:+15551234567' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -l person -d 'Every identity of a person: their number, or one of their identities (CHANNEL:ID)' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -l channel -d 'Only this channel (whatsapp, sms, telegram, slack, cli)' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -l yes -d 'Do not ask for confirmation (for scripts)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from delete" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from help" -f -a "list" -d 'List conversations, most recent first (the default)'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from help" -f -a "show" -d 'Show one conversation\'s messages'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from help" -f -a "search" -d 'Full-text search over all messages, newest first'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from help" -f -a "export" -d 'Everything held about one person (conversations, messages, summaries, traces, outbox items, violations) as JSON'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from help" -f -a "prune" -d 'Delete what is older than the configured retention (`retention.messages`: conversations idle that long, never one still waiting for an answer; `retention.traces`), and say what went'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from help" -f -a "delete" -d 'Delete everything held about one person, in one transaction; only a record that a deletion happened (when, how many rows) is kept'
complete -c convagent -n "__fish_convagent_using_subcommand history; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -l dead -d 'Only dead letters'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -l queued -d 'Only replies still queued'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -l all -d 'Every item, sent and discarded ones too'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -f -a "list" -d 'List queued replies and dead letters, oldest first (the default)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -f -a "retry" -d 'Queue dead letters again: each is tried at once, in order within its conversation, with its failures forgotten'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -f -a "discard" -d 'Give up on queued replies or dead letters for good (kept as the record of what was not sent)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and not __fish_seen_subcommand_from list retry discard help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -l dead -d 'Only dead letters'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -l queued -d 'Only replies still queued'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -l all -d 'Every item, sent and discarded ones too'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -l all-dead -d 'Every dead letter'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -l dead -d 'Only dead letters'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -l queued -d 'Only replies still queued'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -l all -d 'Every item, sent and discarded ones too'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from retry" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -l limit -d 'At most this many rows' -r
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -l json -d 'Print JSON instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -l dead -d 'Only dead letters'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -l queued -d 'Only replies still queued'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -l all -d 'Every item, sent and discarded ones too'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from discard" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "list" -d 'List queued replies and dead letters, oldest first (the default)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "retry" -d 'Queue dead letters again: each is tried at once, in order within its conversation, with its failures forgotten'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "discard" -d 'Give up on queued replies or dead letters for good (kept as the record of what was not sent)'
complete -c convagent -n "__fish_convagent_using_subcommand outbox; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand takeover" -l as -d 'The operator\'s name, as recorded (default: the user name)' -r
complete -c convagent -n "__fish_convagent_using_subcommand takeover" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand takeover" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand takeover" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand takeover" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand takeover" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand reply" -l as -d 'The operator\'s name, as recorded (default: the user name)' -r
complete -c convagent -n "__fish_convagent_using_subcommand reply" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand reply" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand reply" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand reply" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand reply" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand release" -l as -d 'The operator\'s name, as recorded (default: the user name)' -r
complete -c convagent -n "__fish_convagent_using_subcommand release" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand release" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand release" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand release" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand release" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -f -a "list" -d 'The calls waiting for an answer (with --all, the answered ones too)'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -f -a "approve" -d 'Let a waiting call run'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -f -a "deny" -d 'Refuse a waiting call: the model is told and answers without it'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and not __fish_seen_subcommand_from list approve deny help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from list" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from list" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from list" -l all -d 'Answered ones too, newest first'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from list" -l json -d 'JSON lines instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from list" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from approve" -l as -d 'The operator\'s name, as recorded (default: the user name)' -r
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from approve" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from approve" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from approve" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from approve" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from approve" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from deny" -l as -d 'The operator\'s name, as recorded (default: the user name)' -r
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from deny" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from deny" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from deny" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from deny" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from deny" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from help" -f -a "list" -d 'The calls waiting for an answer (with --all, the answered ones too)'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from help" -f -a "approve" -d 'Let a waiting call run'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from help" -f -a "deny" -d 'Refuse a waiting call: the model is told and answers without it'
complete -c convagent -n "__fish_convagent_using_subcommand approvals; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -f -a "list" -d 'People, the newest first, with their identities'
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -f -a "show" -d 'One person: their identities and conversations'
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -f -a "link" -d 'Make two identities (or people) one person'
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -f -a "unlink" -d 'Make an identity a person of its own again'
complete -c convagent -n "__fish_convagent_using_subcommand people; and not __fish_seen_subcommand_from list show link unlink help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from list" -l limit -d 'At most this many' -r
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from list" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from list" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from list" -l json -d 'JSON lines instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from list" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from show" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from show" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from show" -l json
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from show" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from link" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from link" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from link" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from link" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from link" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from unlink" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from unlink" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from unlink" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from unlink" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from unlink" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from help" -f -a "list" -d 'People, the newest first, with their identities'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from help" -f -a "show" -d 'One person: their identities and conversations'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from help" -f -a "link" -d 'Make two identities (or people) one person'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from help" -f -a "unlink" -d 'Make an identity a person of its own again'
complete -c convagent -n "__fish_convagent_using_subcommand people; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -f -a "add" -d 'Index files or directories now (new and changed files)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -f -a "list" -d 'The indexed documents: path, title, chunks, when, their vectors\' embedder'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -f -a "remove" -d 'Take a document out of the index'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -f -a "reindex" -d 'Read every configured and indexed file again'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and not __fish_seen_subcommand_from add list remove reindex help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from add" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from add" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from add" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from add" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from list" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from list" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from list" -l json -d 'JSON lines instead of a table'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from list" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from list" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from remove" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from remove" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from remove" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from remove" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from reindex" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from reindex" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from reindex" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from reindex" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from reindex" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from help" -f -a "add" -d 'Index files or directories now (new and changed files)'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from help" -f -a "list" -d 'The indexed documents: path, title, chunks, when, their vectors\' embedder'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Take a document out of the index'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from help" -f -a "reindex" -d 'Read every configured and indexed file again'
complete -c convagent -n "__fish_convagent_using_subcommand knowledge; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand doctor" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand doctor" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand doctor" -l json -d 'Print the checks as JSON'
complete -c convagent -n "__fish_convagent_using_subcommand doctor" -l live -d 'Also ask the providers: credentials (getMe, auth.test, the Twilio account), the public URL through the tunnel, the Telegram webhook'
complete -c convagent -n "__fish_convagent_using_subcommand doctor" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand doctor" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand replay" -l to -d 'The daemon\'s base URL' -r
complete -c convagent -n "__fish_convagent_using_subcommand replay" -l public-url -d 'The public base URL the daemon knows itself by (Twilio signs it)' -r
complete -c convagent -n "__fish_convagent_using_subcommand replay" -l expect -d 'Check each answer: against STATUS, or the file\'s own expectation' -r
complete -c convagent -n "__fish_convagent_using_subcommand replay" -l rate -d 'Load mode: requests per second, for --duration seconds' -r
complete -c convagent -n "__fish_convagent_using_subcommand replay" -l duration -d 'Load mode: how long to send, in seconds' -r
complete -c convagent -n "__fish_convagent_using_subcommand replay" -l concurrency -d 'Load mode: requests in flight at most' -r
complete -c convagent -n "__fish_convagent_using_subcommand replay" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand replay" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand replay" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand replay" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand replay" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand tunnel" -l port -d 'Local port of `convagent serve` (default: the port of CONVAGENT_LISTEN)' -r
complete -c convagent -n "__fish_convagent_using_subcommand tunnel" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand tunnel" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand tunnel" -l cleanup -d 'On exit, also remove the Telegram webhook'
complete -c convagent -n "__fish_convagent_using_subcommand tunnel" -l keep-alive -d 'Restart cloudflared when it dies (and register the new URL)'
complete -c convagent -n "__fish_convagent_using_subcommand tunnel" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand tunnel" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand tunnel" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand tui" -l as -d 'The operator\'s name recorded with takeovers and replies made here (default: the user name)' -r
complete -c convagent -n "__fish_convagent_using_subcommand tui" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand tui" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand tui" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand tui" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand tui" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall help" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall help" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall help" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall help" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall help" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall help" -f -a "install" -d 'Write the systemd unit and the environment file for the secrets'
complete -c convagent -n "__fish_convagent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall help" -f -a "uninstall" -d 'Remove the unit and the environment file'
complete -c convagent -n "__fish_convagent_using_subcommand service; and not __fish_seen_subcommand_from install uninstall help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from install" -l root -d 'Write under this directory instead of / (system units; for packaging and checking the result)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from install" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from install" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from install" -l user -d 'A unit of your own systemd user manager (no root needed), running with your config and store; without it a system unit (as root)'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from install" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from install" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from install" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -l root -d 'Write under this directory instead of / (system units; for packaging and checking the result)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -l user -d 'A unit of your own systemd user manager (no root needed), running with your config and store; without it a system unit (as root)'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from uninstall" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "install" -d 'Write the systemd unit and the environment file for the secrets'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "uninstall" -d 'Remove the unit and the environment file'
complete -c convagent -n "__fish_convagent_using_subcommand service; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -f -a "backup" -d 'Copy the store to PATH, consistent as of the start, while serve runs (checked with integrity_check before it takes its name)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -f -a "restore" -d 'Put the backup at PATH in place of the store (stop serve first; the store it replaces is kept beside it)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -f -a "migrate" -d 'Copy the SQLite store into Postgres (run it before starting daemons on Postgres; running it again copies only what is new)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and not __fish_seen_subcommand_from backup restore migrate help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from backup" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from backup" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from backup" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from backup" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from backup" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from restore" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from restore" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from restore" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from restore" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from restore" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from migrate" -l to -d 'The Postgres database: postgres://user:password@host/database' -r
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from migrate" -l from -d 'The SQLite file (default: `store.path`, or the usual place)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from migrate" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from migrate" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from migrate" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from migrate" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from migrate" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from help" -f -a "backup" -d 'Copy the store to PATH, consistent as of the start, while serve runs (checked with integrity_check before it takes its name)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from help" -f -a "restore" -d 'Put the backup at PATH in place of the store (stop serve first; the store it replaces is kept beside it)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from help" -f -a "migrate" -d 'Copy the SQLite store into Postgres (run it before starting daemons on Postgres; running it again copies only what is new)'
complete -c convagent -n "__fish_convagent_using_subcommand store; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and not __fish_seen_subcommand_from stdio token help" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and not __fish_seen_subcommand_from stdio token help" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and not __fish_seen_subcommand_from stdio token help" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and not __fish_seen_subcommand_from stdio token help" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and not __fish_seen_subcommand_from stdio token help" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and not __fish_seen_subcommand_from stdio token help" -f -a "stdio" -d 'Serve MCP on stdin and stdout (what `convagent mcp` alone does)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and not __fish_seen_subcommand_from stdio token help" -f -a "token" -d 'The bearer tokens `/mcp` on `serve` accepts'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and not __fish_seen_subcommand_from stdio token help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from stdio" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from stdio" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from stdio" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from stdio" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from stdio" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -f -a "create" -d 'Make a token and print it (once: only its hash is kept)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -f -a "list" -d 'The tokens by name, when made and last used'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -f -a "revoke" -d 'Stop accepting a token'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from token" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from help" -f -a "stdio" -d 'Serve MCP on stdin and stdout (what `convagent mcp` alone does)'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from help" -f -a "token" -d 'The bearer tokens `/mcp` on `serve` accepts'
complete -c convagent -n "__fish_convagent_using_subcommand mcp; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand completions" -l dir -d 'Write the bash, zsh and fish scripts and the man page (convagent.1) into this directory instead' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand completions" -l config -d 'Config file (default: $XDG_CONFIG_HOME/convagent/config.toml)' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand completions" -l env-file -d 'KEY=VALUE lines read as environment variables (secrets of a service; the real environment wins); `serve` reads it again on SIGHUP' -r -F
complete -c convagent -n "__fish_convagent_using_subcommand completions" -s v -l verbose -d 'Show log lines on stderr (-v info, -vv debug)'
complete -c convagent -n "__fish_convagent_using_subcommand completions" -s h -l help -d 'Print help'
complete -c convagent -n "__fish_convagent_using_subcommand completions" -s V -l version -d 'Print version'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "serve" -d 'Run the daemon: channel webhooks, workers, outbox, health, metrics'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "chat" -d 'Talk to the agent in the terminal (channel `cli`)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "history" -d 'List, show and search stored conversations'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "outbox" -d 'Replies still to be sent and dead letters: list, retry, discard'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "takeover" -d 'Take a conversation over: the agent is silent there until released'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "reply" -d 'Answer a conversation as an operator (takes it over)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "release" -d 'Give a conversation back to the agent'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "approvals" -d 'Tool calls waiting for an operator\'s yes or no: list, approve, deny'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "people" -d 'Who is who across channels: list, show, link and unlink identities'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "knowledge" -d 'The documents the agent answers from: add, list, remove, reindex'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "doctor" -d 'Check config, store and LLM providers, with a fix for each problem'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "replay" -d 'Sign golden webhook payloads and post them to a daemon (or load-test it)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "tunnel" -d 'Expose the daemon through cloudflared and register the webhooks'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "tui" -d 'Watch conversations, traces, breakers and the log live; take conversations over, reply, answer approvals'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "service" -d 'Run `serve` as a systemd service: install or remove its unit'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "store" -d 'Move the store: copy a SQLite store into Postgres'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "mcp" -d 'Serve convagent\'s tools to other agents over MCP (stdio), and the tokens of `/mcp` on `serve`'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "completions" -d 'Print shell completion scripts, or write them and the man page'
complete -c convagent -n "__fish_convagent_using_subcommand help; and not __fish_seen_subcommand_from serve chat history outbox takeover reply release approvals people knowledge doctor replay tunnel tui service store mcp completions help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from history" -f -a "list" -d 'List conversations, most recent first (the default)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from history" -f -a "show" -d 'Show one conversation\'s messages'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from history" -f -a "search" -d 'Full-text search over all messages, newest first'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from history" -f -a "export" -d 'Everything held about one person (conversations, messages, summaries, traces, outbox items, violations) as JSON'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from history" -f -a "prune" -d 'Delete what is older than the configured retention (`retention.messages`: conversations idle that long, never one still waiting for an answer; `retention.traces`), and say what went'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from history" -f -a "delete" -d 'Delete everything held about one person, in one transaction; only a record that a deletion happened (when, how many rows) is kept'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from outbox" -f -a "list" -d 'List queued replies and dead letters, oldest first (the default)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from outbox" -f -a "retry" -d 'Queue dead letters again: each is tried at once, in order within its conversation, with its failures forgotten'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from outbox" -f -a "discard" -d 'Give up on queued replies or dead letters for good (kept as the record of what was not sent)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from approvals" -f -a "list" -d 'The calls waiting for an answer (with --all, the answered ones too)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from approvals" -f -a "approve" -d 'Let a waiting call run'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from approvals" -f -a "deny" -d 'Refuse a waiting call: the model is told and answers without it'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from people" -f -a "list" -d 'People, the newest first, with their identities'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from people" -f -a "show" -d 'One person: their identities and conversations'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from people" -f -a "link" -d 'Make two identities (or people) one person'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from people" -f -a "unlink" -d 'Make an identity a person of its own again'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from knowledge" -f -a "add" -d 'Index files or directories now (new and changed files)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from knowledge" -f -a "list" -d 'The indexed documents: path, title, chunks, when, their vectors\' embedder'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from knowledge" -f -a "remove" -d 'Take a document out of the index'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from knowledge" -f -a "reindex" -d 'Read every configured and indexed file again'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "install" -d 'Write the systemd unit and the environment file for the secrets'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from service" -f -a "uninstall" -d 'Remove the unit and the environment file'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from store" -f -a "backup" -d 'Copy the store to PATH, consistent as of the start, while serve runs (checked with integrity_check before it takes its name)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from store" -f -a "restore" -d 'Put the backup at PATH in place of the store (stop serve first; the store it replaces is kept beside it)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from store" -f -a "migrate" -d 'Copy the SQLite store into Postgres (run it before starting daemons on Postgres; running it again copies only what is new)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from mcp" -f -a "stdio" -d 'Serve MCP on stdin and stdout (what `convagent mcp` alone does)'
complete -c convagent -n "__fish_convagent_using_subcommand help; and __fish_seen_subcommand_from mcp" -f -a "token" -d 'The bearer tokens `/mcp` on `serve` accepts'

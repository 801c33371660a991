"""Checks every loader applies to a Conversation before it is used for training.

The layout rules are the ones a chat template can render unambiguously and a trainer can learn from: an optional
system message first, then prompt turns (a user message, or the results of one or more tool calls) alternating with
assistant turns, ending on an assistant turn. The same rules hold for sharegpt and OpenAI input, so a dataset is
rejected for the same reasons whatever format it arrives in.
"""

from __future__ import annotations

from tooltune.conversation import Conversation, ConversationError


def validate_conversation(conv: Conversation) -> None:
    """Raise ``ConversationError`` naming the first problem (the caller adds file and record index)."""
    messages = conv.messages
    if not messages:
        raise ConversationError("no messages")
    start = 1 if messages[0].role == "system" else 0
    if start == 1 and not messages[0].content.strip():
        raise ConversationError("message 0 (system) has empty content")
    if start >= len(messages):
        raise ConversationError("no messages after the system prompt")

    expect_prompt = True
    position = start
    while position < len(messages):
        message = messages[position]
        if message.role == "system":
            raise ConversationError(f"message {position}: a system message is only allowed first")
        if expect_prompt:
            if message.role == "user":
                if not message.content.strip():
                    raise ConversationError(f"message {position} (user) has empty content")
                position += 1
            elif message.role == "tool":
                # Consecutive tool results answer one assistant turn: together they are one prompt turn.
                while position < len(messages) and messages[position].role == "tool":
                    if not messages[position].content.strip():
                        raise ConversationError(f"message {position} (tool result) has empty content")
                    position += 1
            else:
                raise ConversationError(
                    f"bad role order: {message.role!r} at message {position} (expected user or tool)"
                )
        else:
            if message.role != "assistant":
                raise ConversationError(f"bad role order: {message.role!r} at message {position} (expected assistant)")
            if not message.content.strip() and not message.tool_calls:
                raise ConversationError(f"message {position} (assistant) has empty content and no tool calls")
            position += 1
        expect_prompt = not expect_prompt
    if not expect_prompt:
        raise ConversationError("conversation does not end with an assistant turn")
    names = set(conv.tool_names())
    if len(names) != len(conv.tools):
        raise ConversationError("two tools share a name")

"""The language half: llama.cpp (llama.py), what one context holds and whether a prompt's
head is kept, restored or computed (session.py), the prompt template (prompt.py), context
arithmetic (budget.py), saved prefix states (prefix_cache.py) and grammars (grammar.py)."""

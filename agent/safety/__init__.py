"""Safety: the execution gate every operation passes, the policy it applies, and the
remediation intents that make a write happen at most once."""

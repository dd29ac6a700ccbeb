"""Planning: the runbook and LLM planners, declarative conditions, the LLM client and the
handling of untrusted data. A planner only proposes; `agent.safety` decides."""

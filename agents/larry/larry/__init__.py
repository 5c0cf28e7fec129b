"""Larry, the reference agent: prospecting by email (SMTP), calendar invites (iCalendar), phone calls
(a provider) and Markdown documents, driven by the Agent Execution System through `orchestrator_sdk`."""

"""The agent SDK of the Agent Execution System: what an agent machine installs (no server code).

    from orchestrator_sdk import Agent

    agent = Agent.from_credentials("http://localhost:5000", "larry.json")

    @agent.action("send_email")
    def send_email(task):
        ...
        return {"email_sent_to": task.params["to"]}

    agent.run()  # until SIGTERM / SIGINT
"""

from orchestrator_sdk.agent import Agent, TaskContext
from orchestrator_sdk.client import AgentClient, AgentClientError, HumanReviewNeeded, SignedAuth, Work
from orchestrator_sdk.credentials import Credentials, load_or_register

__all__ = ["Agent", "AgentClient", "AgentClientError", "Credentials", "HumanReviewNeeded", "SignedAuth",
           "TaskContext", "Work", "load_or_register"]

"""Personal data and secrets masked: the rules live once, in the agent SDK (`orchestrator_sdk.masking`),
since agents mask their logs by them too; the server's modules import them from here."""

from orchestrator_sdk.masking import MASK, SECRET_NAME, mask_fields, mask_secrets, mask_text, mask_value

__all__ = ["MASK", "SECRET_NAME", "mask_fields", "mask_secrets", "mask_text", "mask_value"]

"""(being written)"""

from flask import Blueprint

bp = Blueprint("executions", __name__, url_prefix="/api")

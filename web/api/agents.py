"""(being written)"""

from flask import Blueprint

bp = Blueprint("agents", __name__, url_prefix="/api")

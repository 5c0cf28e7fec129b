"""(being written)"""

from flask import Blueprint

bp = Blueprint("work", __name__, url_prefix="/api")

"""(being written)"""

from flask import Blueprint

bp = Blueprint("decompose", __name__, url_prefix="/api")

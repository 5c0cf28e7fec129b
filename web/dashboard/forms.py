"""The dashboard's forms (Flask-WTF: each carries and checks the session's CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, StringField
from wtforms.validators import InputRequired, Length

from orchestrator.users import MAX_PASSWORD


class LoginForm(FlaskForm):
    # Lengths only: a name or password that breaks a rule is answered like a wrong one.
    username = StringField("Username", validators=[InputRequired(), Length(max=200)])
    password = PasswordField("Password", validators=[InputRequired(), Length(max=MAX_PASSWORD)])


from mtbert.cli import app

app(prog_name="mtbert")

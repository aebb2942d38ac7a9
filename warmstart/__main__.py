from warmstart.cli import run

run()

from tooltune.cli import run

run()

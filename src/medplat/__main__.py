from medplat.cli import app

app()

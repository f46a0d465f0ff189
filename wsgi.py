from envoi import create_app

app = create_app()

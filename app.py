"""The story playground, as a Hugging Face Space expects it (`python app.py`, or `tinygpt app --model DIR`).

    TINYGPT_MODEL=runs/cpu python app.py
"""

from tinygpt.app import build_app

demo = build_app()

if __name__ == "__main__":
    demo.launch(show_error=True)

"""Long documents, one folder to an answer: a corpus store, a retriever over it, a reader.

    python cookbook/long_documents.py --demo                       # a folder made up here
    python cookbook/long_documents.py docs/ "Who signed the lease?" --store my-store

Every text file of the folder is one document, encoded on its own into a corpus store on
disk (`ilre_engine.CorpusStore`: no limit on the folder's size but the disk; a store that
exists is reused, and the files are only added when it is new). `ILReRetriever` keeps what
the question attends to most across all of them, within a budget of reader tokens, and an
LCEL chain asks the embedded Gemma 3 270M to answer from it, offline. The same store works
from the command line: ``ilre index my-store docs/`` then ``ilre query my-store -q ...``.

``--demo`` writes a folder of essays, one of which hides a fact, and asks for it.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

SUFFIXES = (".txt", ".md", ".rst", ".html")


def demo_folder(root: Path) -> tuple[Path, str, str]:
    """Six essay files, the fourth with a fact in its middle; the question and the answer."""
    from ilre_engine.calibration.tasks import essays

    text = essays()
    rng = random.Random(7)
    folder = root / "essays"
    folder.mkdir(parents=True, exist_ok=True)
    code = f"{rng.randint(100, 999)}-{rng.randint(1000, 9999)}"
    for index in range(6):
        body = text[index * 9000 : index * 9000 + 9000]
        if index == 3:
            middle = body.index(". ", 4500) + 2
            fact = f"The archive's vault code is {code}. "
            body = body[:middle] + fact + body[middle:]
        (folder / f"essay-{index}.txt").write_text(body, encoding="utf-8")
    return folder, "What is the archive's vault code?", code


def reader():
    """The embedded model's full causal LM, greedy, as a LangChain LLM."""
    from langchain_huggingface import HuggingFacePipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    from ilre_engine import embedded_model_path

    path = embedded_model_path()
    generate = pipeline(
        "text-generation",
        model=AutoModelForCausalLM.from_pretrained(path),
        tokenizer=AutoTokenizer.from_pretrained(path),
        max_new_tokens=24,
        do_sample=False,
        return_full_text=False,
    )
    return HuggingFacePipeline(pipeline=generate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", type=Path, help="the documents' folder")
    parser.add_argument("question", nargs="?", help="what to ask")
    parser.add_argument("--store", type=Path, help="the store's directory (default: temporary)")
    parser.add_argument("--budget", type=int, default=300, help="reader tokens of context")
    parser.add_argument("--demo", action="store_true", help="a made-up folder and question")
    args = parser.parse_args()
    if args.demo == bool(args.folder and args.question):
        parser.error("give a folder and a question, or --demo")

    from langchain_core.documents import Document
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import PromptTemplate
    from langchain_core.runnables import RunnablePassthrough
    from langchain_ilre import ILReRetriever

    scratch = Path(tempfile.mkdtemp(prefix="ilre-"))
    expected = None
    if args.demo:
        args.folder, args.question, expected = demo_folder(scratch)
    store = args.store or scratch / "store"
    files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in SUFFIXES)
    if (store / "store.json").exists():
        retriever = ILReRetriever.load(store, budget_tokens=args.budget)
    else:
        documents = [
            Document(page_content=p.read_text(encoding="utf-8"), metadata={"source": str(p)})
            for p in files
        ]
        retriever = ILReRetriever.from_documents(documents, store=store, budget_tokens=args.budget)
    found = retriever.invoke(args.question)
    print(f"{len(files)} files in {args.folder}, store {store}")
    for document in found:
        print(f"  kept from {document.metadata['source']}: {document.page_content[:100]!r}")

    prompt = PromptTemplate.from_template(
        "Answer the question using the context.\n\nContext: {context}\n\n"
        "Question: {question}\nAnswer:"
    )
    chain = (
        {
            "context": retriever | (lambda docs: "\n\n".join(d.page_content for d in docs)),
            "question": RunnablePassthrough(),
        }
        | prompt
        | reader()
        | StrOutputParser()
    )
    answer = chain.invoke(args.question).strip()
    print(f"Q: {args.question}\nA: {answer}")
    if expected is not None:
        print(f"expected: {expected} ({'found' if expected in answer else 'missed'})")


if __name__ == "__main__":
    main()

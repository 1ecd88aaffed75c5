from torpor.cli import main

main(prog_name="torpor")

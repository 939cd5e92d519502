# Drops the paragraph macros scdoc writes where no paragraph can start:
# right after a heading or another paragraph macro, right before a heading
# or the end of an indented block, and last. mandoc skips each of them with
# a warning (mandoc -T lint); groff would print an empty line.
{ line[NR] = $0 }
END {
    for (i = 1; i <= NR; i++) {
        if (line[i] == ".P" || line[i] == ".PP") {
            if (line[i - 1] ~ /^\.(TH|SH|SS|P|PP)( |$)/) continue
            if (line[i + 1] ~ /^\.(SH|SS|P|PP|RE)( |$)/ || i == NR) continue
        }
        print line[i]
    }
}

/* store_bench: the program behind tools/bench/store (not written yet; this
 * stub keeps the build whole until it is). */
int main(void)
{
    return 0;
}

// C++ half of the exactness test program: namespaces, templates and inlined members,
// so demangling (-C) and inlined chains through C++ are compared too.
#include <vector>

namespace kvm {
template <typename T> struct Ring {
	std::vector<T> items;
	inline void push(T v) { items.push_back(v * 2); }
	inline T sum() const {
		T s = 0;
		for (auto v : items)
			s += v;
		return s;
	}
};

template <typename T> __attribute__((noinline)) T drain(Ring<T> &r, int n)
{
	for (int i = 0; i < n; i++)
		r.push(static_cast<T>(i));
	return r.sum();
}
} // namespace kvm

extern "C" int cxx_entry(int n)
{
	kvm::Ring<int> a;
	kvm::Ring<long> b;
	return kvm::drain(a, n) + static_cast<int>(kvm::drain(b, n * 2));
}

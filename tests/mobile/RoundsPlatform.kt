// The JVM stand-in for mobile-bindings/android/RoundsPlatform.kt (no android.content.Context
// here): the same JNI entry point, so the test calls the native half the Android app calls.
package org.rounds.mobile

object RoundsPlatform {
    @JvmStatic
    external fun init(context: Any): Boolean
}
